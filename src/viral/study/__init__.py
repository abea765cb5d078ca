"""The ShapesWorld study: baseline versus VIRAL, measured over seeds.

- `world`: images, label maps and objects of a ShapesWorld folder, as arrays;
- `encoders`: stage 0, the student's vision tower (global objective) and the teacher VFM (dense objective);
- `probes`: patch-level probes and the alignment diagnostics that check the study's premise;
- `stats`: per-type mean and std per arm, paired tests over seeds, McNemar within a seed;
- `pipeline`: stages 1-2 and evaluation for each seed and arm (`viral study`, `viral demo`);
- `report`: `study.md` and the plot.
"""
