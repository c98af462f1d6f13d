"""Device-side code: runs on the Raspberry Pi with numpy, Pillow, tokenizers and onnxruntime/axengine only."""
