"""DVC stages: `python -m pipelines.<stage> --case <case>`, one thin module per stage."""
