"""inverse: pure SQL knowledge (statement classification, capture plans, inverse synthesis).

Imports neither `dbproxy` nor `sandbox`. Filled in by the hold and undo work; empty for now.
"""
