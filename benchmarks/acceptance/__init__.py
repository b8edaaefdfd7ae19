"""Parts of the GPU acceptance run (benchmarks/gpu_acceptance.py).

Each part is one function ``part_<name>(ctx) -> dict`` that the harness runs in its own
process with a time limit; the dict says pass / fail / skip, one summary line, markdown
details and the numbers behind them. common.py holds the run context and the helpers every
part uses; system.py (versions, data, the GPU tests), collectives.py (one-rank process group,
DDP, fused Adam, fp16 scaler), training.py (two processes vs one, ResNet-50 schedule with a
stop and a resume) and benches.py (clustering, step throughput, input pipeline rate) the parts.
"""
