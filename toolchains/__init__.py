"""The NPU toolchains: Pulsar2 (config, calibration archives, remote docker build) and onnxruntime QDQ."""
