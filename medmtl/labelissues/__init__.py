"""Likely label errors (`medmtl audit --label-issues`, issue #17): view labels ranked by confident
learning (cleanlab) on out-of-sample probabilities combined with clip consistency, boxes by
cleanlab's object-detection label quality; written as a CSV and a self-contained HTML review page
whose decisions download as ``corrections.csv``.

`oof` (the pool, predictions from run folders or a CSV), `folds` (K patient-grouped short runs),
`rank` (the rules), `review` (the page), `run` (`label_issues`, the command's body).
"""
