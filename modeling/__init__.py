"""Controller-side model code (torch, transformers): loading CLIP, the tiny test CLIP, export wrappers."""
