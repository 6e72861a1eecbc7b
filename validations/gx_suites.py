"""The data checks as Great Expectations 1.x suites.

Imported lazily (only by `validations.desk.run_data_desk` and the checks' methods):
great_expectations takes about three seconds to import, and nothing that `prefdesk`
imports may pay that. The expectations themselves live with their checks
(`validations.checks`); this module runs them.

Three suites run over pandas DataFrames through an ephemeral context, a pandas data source
and a whole-dataframe batch definition:

- ``prefdesk_rows``: row-level expectations over every pair read. Results come back in
  COMPLETE format with the frame's ``row`` position as the unexpected-index column (ids
  are not unique before de-duplication): those rows are the offending pairs that the
  checks' quarantine rules take.
- ``prefdesk_dataset``: dataset-level expectations over the accepted pairs.
- ``prefdesk_summary``: one row of figures that are no column statistic (shares of the
  input rows, Fleiss' kappa, leaked prompts, the label-direction estimate) and their bounds.

Data Docs are built into ``out_dir/data_docs`` through a filesystem site added to the
ephemeral context (this works in GX 1.x: the validation results live in the in-memory
store for the life of the context, which is long enough to render them).

chosen != rejected: GX's ``ExpectSelectColumnValuesToBeUniqueWithinRecord`` does the job,
but its pandas metric is ``DataFrame.nunique(axis=1)``, a Python call per row (12 s for
200,000 rows). A two-column "values differ" map expectation, registered below with a
vectorised pandas metric, gives the same answer in milliseconds, so the degenerate check
uses that (on the stripped texts' hashes and on the normalized texts' hashes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402 - the checks build theirs from it
from great_expectations.execution_engine import PandasExecutionEngine  # noqa: E402
from great_expectations.expectations.expectation import ColumnPairMapExpectation  # noqa: E402
from great_expectations.expectations.metrics.map_metric_provider import (  # noqa: E402
    ColumnPairMapMetricProvider,
    column_pair_condition_partial,
)

logging.getLogger("great_expectations").setLevel(logging.ERROR)


class ColumnPairValuesDiffer(ColumnPairMapMetricProvider):
    condition_metric_name = "prefdesk_column_pair_values.differ"
    condition_domain_keys = (
        "batch_id", "table", "column_A", "column_B", "row_condition", "condition_parser",
        "ignore_row_if",
    )
    condition_value_keys = ()

    @column_pair_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_A, column_B, **kwargs):  # noqa: N803 - GX's parameter names
        return column_A != column_B


class ExpectColumnPairValuesToDiffer(ColumnPairMapExpectation):
    """Expect the values in column A and column B to differ in every row (chosen != rejected)."""

    map_metric = "prefdesk_column_pair_values.differ"
    success_keys = ("column_A", "column_B", "ignore_row_if", "mostly")
    ignore_row_if: str = "either_value_is_missing"


@dataclass
class ExpResult:
    check: str
    label: str
    success: bool
    element_count: int = 0
    unexpected_count: int = 0
    observed_value: Any = None
    ids: list[int] = field(default_factory=list)  # the "row" column of the offending rows


_RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": ["row"],
    "partial_unexpected_count": 20,
    "return_unexpected_index_query": False,
}


class Runner:
    """One ephemeral context with a pandas data source; runs suites, builds Data Docs."""

    def __init__(self, docs_dir: Path | None):
        self.context = gx.get_context(mode="ephemeral")
        # GX's filesystem store refuses a relative base directory (after the checks ran).
        self.docs_dir = docs_dir = None if docs_dir is None else Path(docs_dir).resolve()
        if docs_dir is not None:
            self.context.add_data_docs_site(
                "prefdesk",
                {
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                      "base_directory": str(docs_dir)},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        self.asset = self.context.data_sources.add_pandas("prefdesk_pairs").add_dataframe_asset("pairs")
        self.batch_definition = self.asset.add_batch_definition_whole_dataframe("all_pairs")

    def run(self, name: str, df: pd.DataFrame, expectations: list) -> list[ExpResult]:
        suite = self.context.suites.add(gx.ExpectationSuite(name=name))
        for exp in expectations:
            suite.add_expectation(exp)
        vd = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}_run", data=self.batch_definition, suite=suite))
        res = vd.run(batch_parameters={"dataframe": df}, result_format=_RESULT_FORMAT)
        out = []
        for r in res.results:
            meta = r.expectation_config.meta or {}
            result = r.result or {}
            ids = [int(d["row"]) for d in result.get("unexpected_index_list") or [] if isinstance(d, dict) and "row" in d]
            if r.exception_info and r.exception_info.get("raised_exception"):
                raise RuntimeError(f"GX expectation {meta.get('label')} raised: "
                                   f"{r.exception_info.get('exception_message')}")
            out.append(ExpResult(
                check=meta.get("check", ""), label=meta.get("label", ""), success=bool(r.success),
                element_count=int(result.get("element_count") or 0),
                unexpected_count=int(result.get("unexpected_count") or 0),
                observed_value=result.get("observed_value"), ids=ids,
            ))
        return out

    def build_docs(self) -> Path | None:
        if self.docs_dir is None:
            return None
        self.context.build_data_docs(site_names=["prefdesk"])
        return self.docs_dir
