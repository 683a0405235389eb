"""Check the cost model's interleaved step time against every measured interleaved split in the
committed decode-step results (benchmarks/results/decode_step_{h100,h200}.json). CPU only.

Usage: python benchmarks/corun_model_check.py [-v]
"""
import json, statistics, sys
sys.path.insert(0, 'benchmarks')
from decode_step import context_lens_for, MIXED, balanced_groups
from pipedecode.models import model_shape
from pipedecode.profiles import load_profile
from pipedecode.planner.cost import CostModel

def evaluate(gpu):
    d = json.load(open(f'benchmarks/results/decode_step_{gpu}.json'))
    prof = load_profile(gpu)
    errs = []; rows = []
    for r in d['rows']:
        if 'interleaved_by_split' not in r: continue
        shape = model_shape(r['model'])
        cm = CostModel(shape, prof)
        b = r['batch']; c = r['context']
        lens = context_lens_for(b, None, MIXED[r['model']]) if isinstance(c, str) else [c] * b
        halves = balanced_groups(lens)
        sizes = [(len(h), sum(lens[i] for i in h)) for h in halves]
        for name, v in r['interleaved_by_split'].items():
            if not name.startswith('split'): continue
            m = int(name[5:])
            pred = cm.interleaved_step_us(sizes, m)
            e = (pred - v['us']) / v['us']
            errs.append(e); rows.append((r['name'], m, round(pred/1e3, 1), round(v['us']/1e3, 1), round(100*e)))
        seqp = cm.sequential_step_us(b, sum(lens))
        rows.append((r['name'], 'seq', round(seqp/1e3,1), round(r['sequential_us']/1e3,1), round(100*(seqp-r['sequential_us'])/r['sequential_us'])))
    return errs, rows

for gpu in ('h100', 'h200'):
    errs, rows = evaluate(gpu)
    if '-v' in sys.argv:
        for x in rows: print(gpu, *x)
    print(gpu, 'interleaved splits: median abs err %.1f%%, median signed %.1f%%, n=%d' % (100*statistics.median(map(abs, errs)), 100*statistics.median(errs), len(errs)))
