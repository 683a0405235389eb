"""Pipeline parallelism the TD-Pipe way: stages on torch.distributed, a controller on rank 0.

  launch.py      torchrun's environment checked, the process groups (NCCL or gloo; gloo control)
  layout.py      layers into balanced stages (the simulator's balancer), each stage's weights
  wire.py        the metadata of a micro-batch as int32 arrays (header + payload)
  stage.py       StageRunner: the paged runner on a layer range, run on received metadata
  channels.py    point-to-point sends and receives, bounded waits, naming a lost stage
  controller.py  rank 0: the engine's scheduler with S micro-batches in flight
  worker.py      ranks > 0: the loop over micro-batches
  pipeline.py    what LLM(..., pipeline_parallel_size=N) holds: start_pipeline, Pipeline

`LLM(model, pipeline_parallel_size=N)` under `torchrun --nproc-per-node N` is the entry point;
docs/pipeline.md says how to launch and what crosses the wire. Imported only when a pipeline
is asked for.
"""
