"""pipedecode.passes"""
