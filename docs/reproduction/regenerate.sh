#!/usr/bin/env bash
# Regenerates every number and figure of docs/reproduction.md from the repository root:
#   bash docs/reproduction/regenerate.sh          # the three small sweeps, then the reports
#   bash docs/reproduction/regenerate.sh report   # only the reports (the sweeps have run)
# The sweeps take about 23 min on 2 CPU cores; relaunching one that finished re-runs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=docs/reproduction
if [[ "${1:-all}" != report ]]; then
    mixsweep launch sweeps/paper/small/q1_supervised.yaml
    mixsweep launch sweeps/paper/small/q2_unsupervised.yaml
    mixsweep launch sweeps/paper/small/q3_k_points.yaml
fi
q1=runs/small_q1_supervised q2=runs/small_q2_unsupervised q3=runs/small_q3_k_points
# the tables (every cell, mean ± sd over seeds) and the full HTML report of each sweep
mixsweep report "$q1" --out "$q1/report.html" --by depth --markdown "$out/q1_tables.md"
mixsweep report "$q2" --out "$q2/report.html" --by depth --markdown "$out/q2_tables.md"
mixsweep report "$q3" --out "$q3/report.html" --by k --markdown "$out/q3_tables.md"
# the contrasts (issue: answers, not just tables): differences with Bonferroni-adjusted
# intervals and verdicts over the endpoints mid and probs; the write-up's verdict blocks are
# then written from their compare.csv (docs/reproduction/verdicts.py)
cmp() { mixsweep compare "$1" --contrast "$2" --layers mid,probs --out "$out/$3"; rm -f "$out/$3/forest.html"; }
cmp "$q1" mixup.mode=sup:erm q1_sup_erm
cmp "$q2" mixup.mode=unsup:erm q2_unsup_erm
cmp "$q2" mixup.mode=unsup:mt q2_unsup_mt
cmp "$q3" mixup.k=4:2 q3_k4_k2
# adaptive seeds: Finding 1 with seeds added only where the answer is open (its rounds.json
# is copied beside the compare outputs for the write-up's block)
if [[ "${1:-all}" != report ]]; then mixsweep launch sweeps/paper/small/q1_adaptive.yaml; fi
mkdir -p "$out/q1_adaptive" && cp runs/small_q1_adaptive/rounds.json "$out/q1_adaptive/"
python3 "$out/verdicts.py"
# the figures of the write-up
mixsweep report "$q1" --out "$q1/fig.html" --by depth --where fraction=1 --where batchnorm=true \
    --figures profile --png "$out/q1_bn"
mixsweep report "$q1" --out "$q1/fig.html" --by depth --where fraction=1 --where batchnorm=false \
    --figures profile --png "$out/q1_nobn"
mixsweep report "$q2" --out "$q2/fig.html" --by depth --where fraction=0.1 --where weight=10,none \
    --figures profile,acc_epochs --png "$out/q2_f01_w10"
mixsweep report "$q3" --out "$q3/fig.html" --by fraction --figures ett_k --png "$out/q3"
