"""pipedecode.runtime.kernels"""
