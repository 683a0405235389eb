"""The pipeline simulator: the engine's scheduling over N GPUs on a virtual clock.

  links.py       GPU-to-GPU links (PCIe Gen5 x16, NVLink 4; assumed numbers, stated)
  workloads.py   seeded offline workloads (ShareGPT-shaped, uniform, fixed), shared with the
                 engine's offline throughput benchmark
  layout.py      layers into balanced pipeline stages, tensor shards, memory and KV blocks
  engine_costs.py  what the engine adds to the cost model's GPU time: decode padding to the
                 runner's buckets, greedy sampling, host time per step (measured rates)
  executors.py   what a micro-batch costs on each stage and link (from the CostModel)
  loop.py        the discrete-event loop around the engine's real Scheduler and policies
  strategies.py  one point: TD-Pipe, plain pipeline, tensor-parallel estimate, replicas
  sweep.py       many points (a process pool, a progress bar) and their JSON
  report.py      the markdown table with its assumptions, and the plot
  calibrate.py   the one-GPU prediction against a measured engine run

Pure CPU: no GPU, no torch.distributed. Imports nothing heavy beyond numpy (matplotlib only
to draw).
"""
