# Sourced by the CPU training launchers (scripts/demo.sh, examples/dfcvae/train_all.sh): glibc keeps freed memory
# mapped instead of handing large blocks back to the kernel after every step, so the next step's activations and
# gradients do not page-fault. Measured on this project's 2-core CPU, batch 64 (benchmarks/launch.py,
# benchmarks/results/cpu-2026-11-25-launch.md): images/s +8% PVAE, +18% VAE-123, +10% VAE-345; jemalloc was
# slower, MALLOC_ARENA_MAX=1 and torch.backends.xeon.run_cpu brought nothing. Values set by the caller win.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1073741824}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4294967296}
export MALLOC_TOP_PAD_=${MALLOC_TOP_PAD_:-268435456}
