//! Data readers (IDX, CIFAR-10 binary, CSV, safetensors), the embedded data sets, and seeded splits.
