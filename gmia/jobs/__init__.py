"""Jobs: one module per command, each `run(config, workdir)` turning a config into report files
(json, csv, png, html) in its workdir; `stages` keeps the one marker of a finished stage and
`pages` renders a job's report as one self-contained HTML page."""
