"""The LM stages: LoRA tuning on the task mixture, dynamic (moving IDs) then static (frozen IDs)."""
