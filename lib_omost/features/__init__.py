"""One module per accordion: its parameter declaration (``FEATURE``) and what it contributes to a generation.

Pure: these modules use ``ModelInfo`` and the AttentionPlan, never the WebUI.
"""
