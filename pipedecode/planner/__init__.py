"""pipedecode.planner"""
