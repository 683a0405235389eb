"""The ILP choosing the mode (sequential, interleaved with its SM split, or co-resident with its
attention budget) and the grouping of requests into micro-batches.

Owns the formulation; solver backends (`solvers/`) solve it, `api.py` turns the answer into a
Schedule and re-prices it with the exact cost model. Knows nothing of files or GPUs.

Variables, for each option o (an allowed memory-partition size s, tag "s<s>"; a co-resident
attention budget b, tag "co<b>") and micro-batch j:
  y_o              1 if option o runs;  y_seq: 1 for sequential (one of them is 1)
  x_b_j_o          requests of context bucket b in micro-batch j (integer)
  t_j_o            time of phase j (attention of j beside post/pre_attn of (j+1) % n), us
Objective (microseconds per step, the LM head left out where it is the same everywhere):
  layers * sum_{j,o} t_j_o + sum_o fill_o * y_o + sequential_layers_us * y_seq
Stage latencies are convex piecewise-linear under-estimates (lower convex hull of the cost model
sampled over micro-batch sizes); the chosen plan is re-priced exactly afterwards. Named
constraints per option include `compute_bound_mb<j>_<tag>`: every micro-batch of an overlapped
step holds at least `Problem.min_micro_batch_tokens` requests (`cost.min_micro_batch_tokens`).
Where those constraints leave no overlapped option feasible (`overlap_feasible`, their closed
form), the answer is sequential without building or solving the ILP (`sequential_without_ilp`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipedecode.planner.cost import CostModel
from pipedecode.planner.lp import Builder, LinearProgram, Solution
from pipedecode.planner.problem import Problem
from pipedecode.profiles.latency import coresident_penalty, corun_weights

_SAMPLES = 17


@dataclass(frozen=True)
class SplitChoice:
    """The decoded answer: memory partition size (interleaved), or the co-resident attention
    budget `smem_bytes`, or neither (sequential); and per-bucket counts."""

    memory_sms: int
    counts: tuple[tuple[int, ...], ...]     # counts[b][j]: requests of bucket b in micro-batch j
    objective_us: float
    smem_bytes: int = 0

    @property
    def mode(self) -> str:
        if self.smem_bytes:
            return "coresident"
        return "interleaved" if self.memory_sms else "sequential"

    @property
    def tag(self) -> str:
        """The option's suffix in the ILP's names."""
        return f"co{self.smem_bytes}" if self.smem_bytes else f"s{self.memory_sms}"


def convex_pieces(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    """(intercept, slope) of the lower convex hull of points sorted by x (monotone chain)."""
    hull: list[tuple[float, float]] = []
    for p in zip(xs, ys):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    if len(hull) == 1:
        return [(hull[0][1], 0.0)]
    pieces = []
    for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
        slope = (y2 - y1) / (x2 - x1)
        pieces.append((y1 - slope * x1, slope))
    return pieces


def _grid(top: float, start: float) -> list[float]:
    points = {start, top} | {start + (top - start) * i / (_SAMPLES - 1) for i in range(_SAMPLES)}
    points |= {float(2 ** e) for e in range(0, 20) if start < 2 ** e < top}
    return sorted(points)


@dataclass(frozen=True)
class SidePrices:
    """Linear under-estimates for one memory-partition size s (microseconds, bytes)."""

    attention: tuple[tuple[float, float], ...]   # (us, us per KV token) pieces
    linear: tuple[tuple[float, float], ...]      # (us, us per token) pieces
    floor_fixed_us: float                        # weights over the whole-chip bandwidth
    floor_per_token_us: float                    # per token of the linear side
    floor_per_request_us: float                  # per request of the attention side
    floor_per_kv_us: float                       # per KV token of the attention side
    corun: tuple[float, float]                   # (w_longer, w_shorter): `corun_weights`
    fill_us: float


def side_prices(problem: Problem, cost: CostModel, s: int, smem_bytes: int = 0) -> SidePrices:
    """The prices of interleaved mode on a memory partition of s SMs, or (smem_bytes > 0) of
    co-resident mode with that attention budget."""
    m, total_tokens = problem.num_micro_batches, len(problem.context_lens)
    total_kv = sum(problem.context_lens)
    kv_grid = _grid(float(max(total_kv, 1)), 0.0)
    tok_grid = _grid(float(total_tokens), 1.0)
    hbm = 1e6 / problem.profile.hbm_bytes_per_s
    even = [(total_tokens // m, total_kv // m)] * m
    if smem_bytes:
        attention = [cost.coresident_attention_us(total_tokens / m, kv, smem_bytes)
                     for kv in kv_grid]
        linear = [cost.coresident_linear_us(t, smem_bytes) for t in tok_grid]
        weights = (1.0, coresident_penalty(problem.profile, smem_bytes, total_tokens / m))
        # the heads run per micro-batch at co-resident speed: their extra over sequential's one
        fill = cost.coresident_fill_drain_us(even, smem_bytes) - cost.head_us(total_tokens)
    else:
        attention = [cost.attention_us(total_tokens / m, kv, s) for kv in kv_grid]
        linear = [cost.linear_us(t, problem.profile.sm_count - s) for t in tok_grid]
        weights, fill = corun_weights(problem.profile, s), cost.fill_drain_us(even)
    return SidePrices(
        attention=tuple(convex_pieces(kv_grid, attention)),
        linear=tuple(convex_pieces(tok_grid, linear)),
        floor_fixed_us=cost.linear_bytes(0) * hbm,
        floor_per_token_us=(cost.linear_bytes(1) - cost.linear_bytes(0)) * hbm,
        floor_per_request_us=cost.attention_bytes(1, 0) * hbm,
        floor_per_kv_us=cost.attention_bytes(0, 1) * hbm,
        corun=weights, fill_us=fill)


def options(problem: Problem) -> list[tuple[int, int]]:
    """(memory_sms, smem_bytes) of every overlapped option: the splits, then the budgets."""
    return [(s, 0) for s in problem.memory_sms_options] + \
        [(0, b) for b in problem.coresident_options]


def split_objective_us(problem: Problem, cost: CostModel, s: int,
                       counts: tuple[tuple[int, ...], ...],
                       prices: SidePrices | None = None, smem_bytes: int = 0) -> float:
    """The ILP's objective for fixed decisions (s = 0 and no smem_bytes: sequential); a
    reference for tests."""
    layers, m = problem.model.num_layers, problem.num_micro_batches
    if s == 0 and not smem_bytes:
        return layers * cost.sequential_layer_us(len(problem.context_lens),
                                                 sum(problem.context_lens))
    pr = prices or side_prices(problem, cost, s, smem_bytes)
    tokens = [sum(c[j] for c in counts) for j in range(m)]
    kv = [sum(c[j] * b.mean_context for c, b in zip(counts, problem.buckets)) for j in range(m)]
    total = pr.fill_us
    for j in range(m):
        att = max(a0 + a1 * kv[j] for a0, a1 in pr.attention)
        lin = max(c0 + c1 * tokens[(j + 1) % m] for c0, c1 in pr.linear)
        floor = pr.floor_fixed_us + pr.floor_per_token_us * tokens[(j + 1) % m] \
            + pr.floor_per_request_us * tokens[j] + pr.floor_per_kv_us * kv[j]
        w_long, w_short = pr.corun
        total += layers * max(w_long * att + w_short * lin, w_long * lin + w_short * att, floor)
    return total


def fewest_tokens(problem: Problem) -> int:
    """The fewest requests each micro-batch of an overlapped option holds: one (constraints
    nonempty_mb*), or `Problem.min_micro_batch_tokens` where larger (compute_bound_mb*)."""
    return max(1, problem.min_micro_batch_tokens)


def micro_batches_too_small(problem: Problem) -> bool:
    """True when `num_micro_batches` micro-batches of the batch cannot each hold
    `fewest_tokens`: every overlapped option then violates nonempty_mb* or compute_bound_mb*."""
    return len(problem.context_lens) < problem.num_micro_batches * fewest_tokens(problem)


def overlap_feasible(problem: Problem) -> bool:
    """Whether some overlapped option of the ILP has a feasible point: the closed form of its
    constraints. assign_bucket*, largest_first_mb*, nonempty_mb* and compute_bound_mb* only
    bound each micro-batch's total (a bucket's integer count may go to any micro-batch), so
    they hold together iff the batch fills `num_micro_batches` micro-batches of
    `fewest_tokens`; kv_cache_fits and one_split are the same for every option."""
    return bool(options(problem)) and not micro_batches_too_small(problem)


def sequential_without_ilp(problem: Problem, cost: CostModel) -> SplitChoice | None:
    """The ILP's answer where its constraints decide it: sequential (at the ILP's objective)
    when no overlapped option is feasible and the KV cache fits; None where it must be solved
    (a KV cache over budget is left to the solver, which reports the infeasible problem)."""
    if overlap_feasible(problem) or problem.kv_bytes > problem.kv_budget_bytes:
        return None
    return SplitChoice(0, (), split_objective_us(problem, cost, 0, ()))


def build_split_lp(problem: Problem, cost: CostModel, *,
                   allow_sequential: bool = True) -> LinearProgram:
    """The named-constraint ILP for the mode, the split or budget, and the grouping."""
    b = Builder("pipedecode_split")
    objective = {b.var("y_seq", 0, 1 if allow_sequential else 0, True):
                 split_objective_us(problem, cost, 0, ())}
    one_split = {"y_seq": 1.0}
    for s, smem in options(problem):
        tag = SplitChoice(s, (), 0.0, smem).tag
        y = b.var(f"y_{s}" if not smem else f"y_{tag}", 0, 1, True)
        one_split[y] = 1.0
        _add_option(b, problem, side_prices(problem, cost, s, smem), tag, y, objective,
                    "coresident" if smem else "corun")
    b.add("one_split", one_split, "==", 1)
    b.add("kv_cache_fits", {v: float(problem.kv_bytes) for v in one_split}, "<=",
          float(problem.kv_budget_bytes))
    return b.build(objective)


def _add_option(b: Builder, problem: Problem, pr: SidePrices, tag: str, y: str,
                objective: dict, overlap: str) -> None:
    """One option's variables and named constraints (see the module docstring)."""
    m, layers, buckets = problem.num_micro_batches, problem.model.num_layers, problem.buckets
    suffix = tag[1:] if tag.startswith("s") else tag     # x_0_1_64 (a split), x_0_1_co65536
    objective[y] = pr.fill_us
    x = {(k, j): b.var(f"x_{k}_{j}_{suffix}", 0, bk.count, True)
         for k, bk in enumerate(buckets) for j in range(m)}
    tokens = [{x[k, j]: 1.0 for k in range(len(buckets))} for j in range(m)]
    kv = [{x[k, j]: bk.mean_context for k, bk in enumerate(buckets)} for j in range(m)]
    for k, bk in enumerate(buckets):
        b.add(f"assign_bucket{k}_{tag}", {**{x[k, j]: 1.0 for j in range(m)}, y: -bk.count},
              "==", 0)
    for j in range(m):
        t = b.var(f"t_{j}_{suffix}")
        objective[t] = float(layers)
        partner = tokens[(j + 1) % m]
        b.add(f"nonempty_mb{j}_{tag}", {**tokens[j], y: -1.0}, ">=", 0)
        if problem.min_micro_batch_tokens > 1:      # fewest_tokens > 1: not just nonempty
            b.add(f"compute_bound_mb{j}_{tag}",
                  {**tokens[j], y: -float(fewest_tokens(problem))}, ">=", 0)
        if j:
            b.add(f"largest_first_mb{j}_{tag}", {**tokens[0], **{v: -1.0 for v in tokens[j]}},
                  ">=", 0)
        att, lin = b.var(f"att_{j}_{suffix}"), b.var(f"lin_{j}_{suffix}")   # each side alone
        for i, (a0, a1) in enumerate(pr.attention):
            b.add(f"attention_mb{j}_{tag}_piece{i}",
                  {att: 1.0, y: -a0, **{v: -a1 * c for v, c in kv[j].items()}}, ">=", 0)
        for i, (c0, c1) in enumerate(pr.linear):
            b.add(f"linear_mb{(j + 1) % m}_{tag}_piece{i}",
                  {lin: 1.0, y: -c0, **{v: -c1 for v in partner}}, ">=", 0)
        w_long, w_short = pr.corun
        b.add(f"{overlap}_attention_longer_phase{j}_{tag}",
              {t: 1.0, att: -w_long, lin: -w_short}, ">=", 0)
        b.add(f"{overlap}_linear_longer_phase{j}_{tag}",
              {t: 1.0, lin: -w_long, att: -w_short}, ">=", 0)
        floor = {t: 1.0, y: -pr.floor_fixed_us}
        for k, bk in enumerate(buckets):
            mine, before = x[k, j], x[k, (j + 1) % m]
            floor[mine] = floor.get(mine, 0.0) - pr.floor_per_request_us \
                - pr.floor_per_kv_us * bk.mean_context
            floor[before] = floor.get(before, 0.0) - pr.floor_per_token_us
        b.add(f"shared_hbm_phase{j}_{tag}", floor, ">=", 0)


def decode_split(problem: Problem, solution: Solution) -> SplitChoice:
    """Read y and x back into a SplitChoice."""
    values, m = solution.values, problem.num_micro_batches
    if values["y_seq"] > 0.5:
        return SplitChoice(0, (), solution.objective)
    for s, smem in options(problem):
        choice = SplitChoice(s, (), solution.objective, smem)
        suffix = choice.tag[1:] if not smem else choice.tag
        if values[f"y_{suffix}"] > 0.5:
            counts = tuple(tuple(int(round(values[f"x_{k}_{j}_{suffix}"])) for j in range(m))
                           for k in range(len(problem.buckets)))
            return SplitChoice(s, counts, solution.objective, smem)
    raise ValueError("decode_split: the solution runs no option")


def sizes_of(problem: Problem, counts: tuple[tuple[int, ...], ...]) -> list[tuple[int, int]]:
    """(tokens, KV tokens) of each micro-batch of per-bucket counts."""
    return [(sum(c[j] for c in counts),
             round(sum(c[j] * b.mean_context for c, b in zip(counts, problem.buckets))))
            for j in range(problem.num_micro_batches)]


def exact_step_us(problem: Problem, cost: CostModel, choice: SplitChoice) -> float:
    """The exact cost model's step time of an overlapped choice (inf where a micro-batch is
    empty or under `min_micro_batch_tokens`)."""
    sizes = sizes_of(problem, choice.counts)
    if min(t for t, _ in sizes) < fewest_tokens(problem):
        return float("inf")
    if choice.mode == "coresident":
        return cost.coresident_step_us(sizes, choice.smem_bytes)
    return cost.interleaved_step_us(sizes, choice.memory_sms)


def refine(problem: Problem, cost: CostModel, choice: SplitChoice,
           max_rounds: int = 12) -> SplitChoice:
    """Local search on the exact cost model from the ILP's answer: move requests of one bucket
    between micro-batches, or the split (the attention budget) by one step, while the predicted
    step gets faster. Removes most of the gap the convex under-estimates leave; deterministic."""
    if choice.mode == "sequential":
        return choice
    m = problem.num_micro_batches
    steps = [(s, 0) for s in problem.memory_sms_options] if choice.mode == "interleaved" else \
        [(0, b) for b in problem.coresident_options]
    best = exact_step_us(problem, cost, choice)
    for _ in range(max_rounds):
        here = steps.index((choice.memory_sms, choice.smem_bytes))
        moves = [SplitChoice(*steps[k][:1], choice.counts, choice.objective_us, steps[k][1])
                 for k in (here - 1, here + 1) if 0 <= k < len(steps)]
        counts = choice.counts
        for k, row in enumerate(counts):
            for a in range(m):
                for step in sorted({1, max(1, row[a] // 4), row[a]}):
                    if row[a] < step:
                        continue
                    for b in range(m):
                        if b != a:
                            new = list(row)
                            new[a], new[b] = new[a] - step, new[b] + step
                            moves.append(SplitChoice(choice.memory_sms, counts[:k] + (
                                tuple(new),) + counts[k + 1:], choice.objective_us,
                                choice.smem_bytes))
        scored = min(((exact_step_us(problem, cost, c), i, c) for i, c in enumerate(moves)),
                     key=lambda t: t[:2])
        if scored[0] >= best * (1 - 1e-9):
            break
        best, choice = scored[0], scored[2]
    return choice
