"""Report stage: ranked label-issues table, health summary, plots, metrics, atomic writer.

Notebook use::

    from deft_jax import report
    table, summary, text = report.build_and_write_report(
        "workdir/report", detection, given=labels, class_names=names, clean_labels=truth)
    print(text)

Reading or writing a report imports no JAX.
"""

from deft_jax.report.inputs import ReportInputError, check_inputs
from deft_jax.report.metrics import (auroc, classification_metrics, detection_metrics, macro_average,
                                     per_class_detection_metrics)
from deft_jax.report.plots import suspects_grid_array
from deft_jax.report.summary import build_summary, format_health_summary
from deft_jax.report.table import label_issues_table
from deft_jax.report.writer import build_and_write_report, load_report, recover, write_report
