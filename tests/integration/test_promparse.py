#!/usr/bin/env python3
"""Tests of promparse.py: what it accepts, exactly what it returns, and every class of text it must
refuse. Run: python3 tests/integration/test_promparse.py (ctest: deploy.promparse)."""

import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import promparse  # noqa: E402
from promparse import PromParseError, parse  # noqa: E402

GOOD = """\
# HELP req_total Requests \\\\ served.\\nSecond line.
# TYPE req_total counter
req_total{deployment="gpt-4o",code_class="2xx"} 7
req_total{deployment="a\\\\b\\"c\\nd",code_class="5xx"} 1 1700000000000
# A free comment is ignored.

# TYPE temp gauge
temp -1.5e3
# TYPE lat histogram
# HELP lat Latency.
lat_bucket{op="chat",le="0.5"} 1
lat_bucket{op="chat",le="1"} 3
lat_bucket{op="chat",le="+Inf"} 4
lat_sum{op="chat"} 104.25
lat_count{op="chat"} 4
lat_bucket{le="0.5"} 0
lat_bucket{le="+Inf"} 0
lat_sum 0
lat_count 0
# TYPE rpc summary
rpc{quantile="0.5"} 0.2
rpc{quantile="0.99"} NaN
rpc_sum 3
rpc_count 9
# TYPE up untyped
up{a="x",} +Inf
"""

HIST_HEAD = "# TYPE h histogram\n"


class Accepts(unittest.TestCase):
    def test_good_document_exact_result(self):
        fams = parse(GOOD)
        self.assertEqual(sorted(fams), ["lat", "req_total", "rpc", "temp", "up"])
        req = fams["req_total"]
        self.assertEqual(req.type, "counter")
        self.assertEqual(req.help, "Requests \\ served.\nSecond line.")
        self.assertEqual(req.get(deployment="gpt-4o", code_class="2xx"), 7.0)
        self.assertEqual(req.get(deployment='a\\b"c\nd', code_class="5xx"), 1.0)
        self.assertEqual(req.samples[1].timestamp, 1700000000000)
        self.assertIsNone(req.samples[0].timestamp)
        with self.assertRaises(KeyError):
            req.get(deployment="gpt-4o")
        self.assertEqual(fams["temp"].get(), -1500.0)
        self.assertEqual(fams["temp"].help, None)
        h = fams["lat"].histogram(op="chat")
        self.assertEqual(h, {"buckets": [(0.5, 1.0), (1.0, 3.0), (math.inf, 4.0)], "sum": 104.25,
                             "count": 4.0})
        self.assertEqual(fams["lat"].histogram()["count"], 0.0)
        self.assertTrue(math.isnan(fams["rpc"].get(quantile="0.99")))
        self.assertEqual(fams["up"].get(a="x"), math.inf)
        self.assertEqual(len(fams["lat"].samples), 9)

    def test_empty_text(self):
        self.assertEqual(parse(""), {})

    def test_bytes_input(self):
        self.assertEqual(parse("# TYPE x gauge\nx{v=\"é\"} 1\n".encode()).get("x").get(v="é"), 1.0)

    def test_float_spellings(self):
        for text, want in (("1", 1.0), ("-0", 0.0), ("+3.5", 3.5), (".5", 0.5), ("5.", 5.0),
                           ("1e3", 1000.0), ("2.5E-3", 0.0025), ("-Inf", -math.inf)):
            self.assertEqual(parse("# TYPE g gauge\ng %s\n" % text)["g"].get(), want, text)

    def test_same_labels_different_sample_names_are_not_duplicates(self):
        text = HIST_HEAD + 'h_bucket{le="+Inf"} 2\nh_sum 2\nh_count 2\n'
        self.assertEqual(parse(text)["h"].histogram()["count"], 2.0)


class Rejects(unittest.TestCase):
    def bad(self, text, fragment, line=None):
        with self.assertRaises(PromParseError) as cm:
            parse(text)
        self.assertIn(fragment, str(cm.exception))
        if line is not None:
            self.assertEqual(cm.exception.lineno, line)

    def test_missing_type(self):
        self.bad("x 1\n", "no # TYPE", 1)
        self.bad("# HELP x doc\nx 1\n", "no # TYPE", 2)
        self.bad("# HELP x doc\n", "HELP but no TYPE")

    def test_type_after_samples(self):
        self.bad("# TYPE x gauge\nx 1\n# TYPE x gauge\n", "second TYPE", 3)

    def test_type_must_precede(self):
        self.bad("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# HELP a late\n", "not contiguous", 5)

    def test_second_help(self):
        self.bad("# HELP x a\n# HELP x b\n# TYPE x gauge\n", "second HELP", 2)

    def test_interleaved_families(self):
        self.bad("# TYPE a gauge\n# TYPE b gauge\na 1\n", "not contiguous", 3)

    def test_unknown_type(self):
        self.bad("# TYPE x gaug\n", "unknown metric type")
        self.bad("# TYPE x gauge extra\n", "unknown metric type")

    def test_duplicate_series(self):
        self.bad('# TYPE x gauge\nx{a="1",b="2"} 1\nx{b="2",a="1"} 2\n', "duplicate series", 3)
        self.bad("# TYPE x gauge\nx 1\nx 2\n", "duplicate series", 3)

    def test_bad_escapes(self):
        self.bad('# TYPE x gauge\nx{a="\\t"} 1\n', "bad escape")
        self.bad('# TYPE x gauge\nx{a="x\\"} 1\n', "unterminated")
        self.bad("# HELP x a\\tb\n# TYPE x gauge\n", "bad escape", 1)
        self.bad("# HELP x trailing\\\n# TYPE x gauge\n", "bad escape", 1)

    def test_label_syntax(self):
        self.bad('# TYPE x gauge\nx{1a="1"} 1\n', "invalid label name")
        self.bad('# TYPE x gauge\nx{__name__="1"} 1\n', "reserved label name")
        self.bad('# TYPE x gauge\nx{a="1",a="2"} 1\n', "duplicate label name")
        self.bad('# TYPE x gauge\nx{a=1} 1\n', 'expected ="')
        self.bad('# TYPE x gauge\nx{a="1" } 1\n', "expected , or }")
        self.bad('# TYPE x gauge\nx{ a="1"} 1\n', "invalid label name")

    def test_metric_names(self):
        self.bad("# TYPE 1x gauge\n", "invalid metric name")
        self.bad("# TYPE x-y gauge\n", "invalid metric name")
        self.bad("# TYPE x gauge\n-x 1\n", "invalid metric name")

    def test_bad_floats(self):
        for v in ("0x10", "1_000", "inf", "Inf", "nan", "1e", "1.2.3", ".", "", "1e+", "++1", "Infinity"):
            self.bad("# TYPE g gauge\ng %s\n" % v, "", 2)
        self.bad("# TYPE g gauge\ng 0x10\n", "bad float syntax")
        self.bad("# TYPE g gauge\ng 1 12.5\n", "bad timestamp")
        self.bad("# TYPE g gauge\ng 1 2 3\n", "expected VALUE")
        self.bad("# TYPE g gauge\ng1\n", "")

    def test_negative_counter(self):
        self.bad("# TYPE c counter\nc -1\n", "negative")

    def test_histogram_missing_inf(self):
        self.bad(HIST_HEAD + 'h_bucket{le="1"} 2\nh_sum 2\nh_count 2\n', 'no le="+Inf"')
        self.bad(HIST_HEAD + "h_sum 2\nh_count 2\n", 'no le="+Inf"')

    def test_histogram_not_cumulative(self):
        self.bad(HIST_HEAD + 'h_bucket{le="1"} 3\nh_bucket{le="2"} 2\nh_bucket{le="+Inf"} 3\n'
                 "h_sum 2\nh_count 3\n", "not cumulative", 3)

    def test_histogram_le_order(self):
        self.bad(HIST_HEAD + 'h_bucket{le="2"} 1\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 1\n'
                 "h_sum 2\nh_count 1\n", "not strictly increasing", 3)
        self.bad(HIST_HEAD + 'h_bucket{le="x"} 1\nh_bucket{le="+Inf"} 1\nh_sum 2\nh_count 1\n',
                 "bad float syntax in le label")

    def test_histogram_count_mismatch(self):
        self.bad(HIST_HEAD + 'h_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 2\nh_count 3\n',
                 "_count 3.0 != +Inf bucket 2.0", 5)

    def test_histogram_missing_sum_or_count(self):
        self.bad(HIST_HEAD + 'h_bucket{le="+Inf"} 2\nh_count 2\n', "no _sum")
        self.bad(HIST_HEAD + 'h_bucket{le="+Inf"} 2\nh_sum 2\n', "no _count")

    def test_histogram_le_placement(self):
        self.bad(HIST_HEAD + "h_bucket 2\n", "le label")
        self.bad(HIST_HEAD + 'h_sum{le="1"} 2\n', "le label")
        self.bad(HIST_HEAD + "h 2\n", "no # TYPE")

    def test_summary_rules(self):
        self.bad("# TYPE s summary\ns 1\ns_sum 1\ns_count 1\n", "quantile label")
        self.bad('# TYPE s summary\ns{quantile="2"} 1\ns_sum 1\ns_count 1\n', "out of [0, 1]")
        self.bad('# TYPE s summary\ns{quantile="0.5"} 1\ns_sum 1\n', "no _count")

    def test_text_framing(self):
        self.bad("# TYPE g gauge\ng 1", "does not end with", 2)
        self.bad("# TYPE g gauge\r\ng 1\n", "carriage return", 1)
        self.bad("# TYPE g gauge\ng 1\r\n", "", 2)
        self.bad(b"# TYPE g gauge\ng{a=\"\xff\"} 1\n", "not valid UTF-8")


class CommandLine(unittest.TestCase):
    def run_cli(self, text):
        with tempfile.NamedTemporaryFile("w", suffix=".prom", delete=False) as f:
            f.write(text)
        try:
            return subprocess.run([sys.executable, promparse.__file__, f.name], capture_output=True,
                                  text=True, timeout=30)
        finally:
            os.unlink(f.name)

    def test_cli_ok(self):
        r = self.run_cli(GOOD)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual(out["req_total"]["samples"][0],
                         {"name": "req_total", "labels": {"deployment": "gpt-4o", "code_class": "2xx"},
                          "value": 7.0})
        self.assertEqual(out["up"]["samples"][0]["value"], "+Inf")
        self.assertEqual(out["rpc"]["samples"][1]["value"], "NaN")

    def test_cli_error(self):
        r = self.run_cli("x 1\n")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")
        self.assertIn("line 1: sample 'x' has no # TYPE line before it", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=1)
