# The two set-up commands of the README, and helpers.
.PHONY: test demo docs bench build-cuda clean gpu-check

# Runs the tests in .venv-test (created and installed on first use; CUDA kernels compiled when nvcc exists).
test:
	bash scripts/test.sh

# Trains a short VAE-123 run on ../shared/data/celeba on the CPU, in .venv-demo; see README.
demo:
	bash scripts/demo.sh

# The documentation site (docs/, API reference from the docstrings) into site/, in .venv-docs; strict: a warning fails.
docs:
	bash scripts/docs.sh

# Benchmarks of the fused operator and the loss (writes benchmarks/results/).
bench:
	bash scripts/setup_venv.sh .venv-test pytest-benchmark pillow lpips piq torchmetrics
	.venv-test/bin/python benchmarks/run.py
	.venv-test/bin/python benchmarks/precision.py
	.venv-test/bin/python benchmarks/launch.py

# The first session on a GPU machine (torch preinstalled, no network, nothing installed): build in place, tests,
# compute-sanitizer, losses, a training step, GPU benchmarks; at most 8 files in $OUT (default /tmp/perceptloss-gpu-check).
gpu-check:
	bash scripts/gpu_check.sh $(OUT)

# C++ side build against libtorch with CMake (CUDA optional).
build-cuda:
	cmake -S . -B build -DCMAKE_PREFIX_PATH=$$(.venv-test/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)') && cmake --build build -j2

clean:
	rm -rf build site perceptloss/_C*.so *.egg-info
