"""Training the user simulator: SFT (`sft`) and the helpers later stages reuse (`common`)."""
