"""Dev-only export toolchain: training data, PyTorch modules and ONNX conversion (needs torch and onnx; never
imported by ptolemy_rt)."""
