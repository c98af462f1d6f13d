"""The contract between export and the device: file names, tensor names, dtypes.

Shared by the controller (export, verify) and the device runtime so both sides agree by construction.
"""

from __future__ import annotations

IMAGE_MODEL_FILE = "image_encoder.onnx"
TEXT_MODEL_FILE = "text_encoder.onnx"
# The same text encoder with dynamic batch and length, for embed-vocab on the controller (never fetched):
# causal attention means an EOS at position p sees only tokens 0..p, so ids cut after the batch's last
# EOS give the same embedding as the full context, at a fraction of the work.
TEXT_BATCH_MODEL_FILE = "text_encoder_batched.onnx"
IMAGE_INPUT = "pixel_values"  # float32 [1, 3, S, S], CLIP-normalized
IMAGE_OUTPUT = "image_embeds"  # float32 [1, projection_dim]
TEXT_INPUT = "input_ids"  # int64 [1, context_length] in ONNX; int32 on the NPU (src_dtype S32)
TEXT_OUTPUT = "text_embeds"  # float32 [1, projection_dim]
TOKENIZER_FILE = "tokenizer.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
EXPORT_INFO_FILE = "export.json"
