"""cyclerctl.report: figures of a run (the figure types of the source papers)."""


def make_report(run_dir):  # noqa: ANN001, ANN201 - thin re-export, imports matplotlib lazily
    """Write the figures of RUN_DIR into RUN_DIR/report/ (PNG and PDF); return their paths."""
    from .figures import make_report as _make

    return _make(run_dir)
