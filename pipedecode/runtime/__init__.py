"""pipedecode.runtime"""
