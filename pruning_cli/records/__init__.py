"""What a run leaves on disk and every reader may rely on: the records contract (`contract`: CSV schemas, run.json,
the keys of an experiment) and the files that hold them (`files`: CSV logs, checkpoints, atomic writes). Imports
only the schemas (`config`) and errors: the run writes through it, the report and the exporter read through it."""
