"""The LLM side of TokenRec: the backbone, prompts with ID tokens, and the scorer that serves a trained LLM4Rec."""
