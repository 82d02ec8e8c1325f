#!/usr/bin/env python3
"""Strict parser of the Prometheus text exposition format, version 0.0.4, for tests.

parse(text) returns {family name: Family}; each Family has .type, .help and .samples (a list of Sample
with .name, .labels (dict), .value (float) and .timestamp (int or None)). Anything doubtful raises
PromParseError naming the line. Stricter than Prometheus itself, on purpose:

  * every sample belongs to a family announced by a "# TYPE" line that comes BEFORE its samples
    (no implicit "untyped"); HELP and TYPE at most once per family; a family's lines are contiguous;
  * metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* and not "__..."; no
    duplicate label name in a sample; no blanks inside {...}; a trailing comma in {...} is allowed
    (the format's grammar allows it);
  * label values escape only \\\\, \\" and \\n; HELP text only \\\\ and \\n: any other backslash fails;
  * values: decimal floats ([+-]digits[.digits][e[+-]digits] or .digits...), NaN, +Inf, -Inf only
    (no hex, no underscores, no "inf"); timestamps: integers;
  * the same series (sample name + label set) twice fails;
  * counters are >= 0; histograms: per label set, _bucket lines with strictly increasing le ending with
    le="+Inf", cumulative (non-decreasing, >= 0) counts, a _sum and a _count equal to the +Inf bucket;
    le only on _bucket lines; summaries: quantile on the plain samples, _sum and _count present;
  * the text is UTF-8, uses \\n line ends (no \\r outside label values) and ends with \\n (or is empty).

Command line: promparse.py FILE ("-" for stdin) prints the families as JSON (non-finite values as the
strings "NaN", "+Inf", "-Inf") and exits 0, or prints "line N: reason" to stderr and exits 1.
"""

import json
import math
import re
import sys

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
TIMESTAMP = re.compile(r"-?[0-9]+")
BLANKS = re.compile(r"[ \t]+")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class PromParseError(ValueError):
    """A violation of the format, with the 1-based line number (0: the text as a whole)."""

    def __init__(self, lineno, message):
        super().__init__("line %d: %s" % (lineno, message))
        self.lineno = lineno
        self.reason = message


class Sample:
    __slots__ = ("name", "labels", "value", "timestamp", "lineno")

    def __init__(self, name, labels, value, timestamp, lineno):
        self.name = name
        self.labels = labels
        self.value = value
        self.timestamp = timestamp
        self.lineno = lineno

    def __repr__(self):
        return "Sample(%r, %r, %r)" % (self.name, self.labels, self.value)


class Family:
    def __init__(self, name):
        self.name = name
        self.type = None
        self.help = None
        self.samples = []

    def get(self, sample_name=None, **labels):
        """The value of the sample with exactly these labels (KeyError when absent)."""
        name = sample_name or self.name
        for s in self.samples:
            if s.name == name and s.labels == labels:
                return s.value
        raise KeyError("%s%r" % (name, labels))

    def series(self, sample_name=None):
        """{frozenset(labels.items()): value} for one sample name (default: the family name)."""
        name = sample_name or self.name
        return {frozenset(s.labels.items()): s.value for s in self.samples if s.name == name}

    def histogram(self, **labels):
        """{"buckets": [(le, cumulative count)...], "sum": x, "count": n} for one label set."""
        buckets = [(float(s.labels["le"]), s.value) for s in self.samples
                   if s.name == self.name + "_bucket"
                   and {k: v for k, v in s.labels.items() if k != "le"} == labels]
        if not buckets:
            raise KeyError("%s%r" % (self.name, labels))
        return {"buckets": buckets, "sum": self.get(self.name + "_sum", **labels),
                "count": self.get(self.name + "_count", **labels)}


def parse_float(text, lineno, what="value"):
    if text == "NaN":
        return math.nan
    if text == "+Inf":
        return math.inf
    if text == "-Inf":
        return -math.inf
    if not FLOAT.fullmatch(text):
        raise PromParseError(lineno, "bad float syntax in %s: %r" % (what, text))
    return float(text)


def _unescape(raw, lineno, allowed, what):
    out = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\":
            if i + 1 >= len(raw) or raw[i + 1] not in allowed:
                raise PromParseError(lineno, "bad escape in %s: %r" % (what, raw[i:i + 2]))
            out.append(allowed[raw[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


HELP_ESCAPES = {"\\": "\\", "n": "\n"}
LABEL_ESCAPES = {"\\": "\\", "n": "\n", '"': '"'}


def _parse_labels(line, pos, lineno):
    """Parses {a="x",...} starting at line[pos] == "{"; returns (labels, position after "}")."""
    labels = {}
    pos += 1
    while True:
        if pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        m = LABEL_NAME.match(line, pos)
        if not m:
            raise PromParseError(lineno, "invalid label name at column %d" % (pos + 1))
        name = m.group(0)
        if name.startswith("__"):
            raise PromParseError(lineno, "reserved label name %r" % name)
        if name in labels:
            raise PromParseError(lineno, "duplicate label name %r" % name)
        pos = m.end()
        if line[pos:pos + 2] != '="':
            raise PromParseError(lineno, "expected =\" after label name %r" % name)
        pos += 2
        start = pos
        while True:
            if pos >= len(line):
                raise PromParseError(lineno, "unterminated label value for %r" % name)
            if line[pos] == "\\":
                pos += 2
                continue
            if line[pos] == '"':
                break
            pos += 1
        labels[name] = _unescape(line[start:pos], lineno, LABEL_ESCAPES, "label value")
        pos += 1
        if pos < len(line) and line[pos] == ",":
            pos += 1
        elif pos < len(line) and line[pos] == "}":
            continue
        else:
            raise PromParseError(lineno, "expected , or } after label %r" % name)


class _Parser:
    def __init__(self):
        self.families = {}
        self.current = None        # family whose lines are being read
        self.closed = set()        # families whose group has ended
        self.series = set()

    def _enter(self, fam, lineno):
        if self.current is fam:
            return
        if fam.name in self.closed:
            raise PromParseError(lineno, "lines of family %r are not contiguous" % fam.name)
        if self.current is not None:
            self.closed.add(self.current.name)
        self.current = fam

    def _family_for_meta(self, name, lineno):
        if not METRIC_NAME.fullmatch(name):
            raise PromParseError(lineno, "invalid metric name %r" % name)
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = Family(name)
        self._enter(fam, lineno)
        return fam

    def comment(self, line, lineno):
        if "\r" in line:
            raise PromParseError(lineno, "carriage return in a comment line")
        tokens = BLANKS.split(line.lstrip(" \t")[1:].lstrip(" \t"), 2)
        if not tokens or tokens[0] not in ("HELP", "TYPE"):
            return
        kind = tokens[0]
        if len(tokens) < 2 or not tokens[1]:
            raise PromParseError(lineno, "%s without a metric name" % kind)
        fam = self._family_for_meta(tokens[1], lineno)
        rest = tokens[2] if len(tokens) > 2 else ""
        if kind == "HELP":
            if fam.help is not None:
                raise PromParseError(lineno, "second HELP for %r" % fam.name)
            fam.help = _unescape(rest, lineno, HELP_ESCAPES, "HELP text")
        else:
            if fam.type is not None:
                raise PromParseError(lineno, "second TYPE for %r" % fam.name)
            if fam.samples:
                raise PromParseError(lineno, "TYPE for %r after its samples" % fam.name)
            if rest not in TYPES:
                raise PromParseError(lineno, "unknown metric type %r" % rest)
            fam.type = rest

    def _resolve(self, name, lineno):
        fam = self.families.get(name)
        if fam is not None and fam.type in ("counter", "gauge", "untyped", "summary"):
            return fam
        for suffix, types in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                              ("_count", ("histogram", "summary"))):
            if name.endswith(suffix):
                base = self.families.get(name[:-len(suffix)])
                if base is not None and base.type in types:
                    return base
        raise PromParseError(lineno, "sample %r has no # TYPE line before it" % name)

    def sample(self, line, lineno):
        m = METRIC_NAME.match(line)
        if not m:
            raise PromParseError(lineno, "invalid metric name at start of line")
        name = m.group(0)
        pos = m.end()
        labels = {}
        if pos < len(line) and line[pos] == "{":
            labels, pos = _parse_labels(line, pos, lineno)
        b = BLANKS.match(line, pos)
        if not b:
            raise PromParseError(lineno, "expected blank before the value of %r" % name)
        fields = BLANKS.split(line[b.end():])
        if len(fields) not in (1, 2) or not fields[0]:
            raise PromParseError(lineno, "expected VALUE [TIMESTAMP] after %r" % name)
        value = parse_float(fields[0], lineno)
        timestamp = None
        if len(fields) == 2:
            if not TIMESTAMP.fullmatch(fields[1]):
                raise PromParseError(lineno, "bad timestamp %r" % fields[1])
            timestamp = int(fields[1])
        fam = self._resolve(name, lineno)
        self._enter(fam, lineno)
        key = (name, frozenset(labels.items()))
        if key in self.series:
            raise PromParseError(lineno, "duplicate series %s%s" % (name, _fmt_labels(labels)))
        self.series.add(key)
        if fam.type == "counter" and (math.isnan(value) or value < 0):
            raise PromParseError(lineno, "counter %r has a negative or NaN value" % name)
        if fam.type == "histogram":
            if (name == fam.name + "_bucket") != ("le" in labels):
                raise PromParseError(lineno, "le label must be on, and only on, %s_bucket" % fam.name)
        if fam.type == "summary":
            if (name == fam.name) != ("quantile" in labels):
                raise PromParseError(lineno, "quantile label must be on, and only on, %s" % fam.name)
        fam.samples.append(Sample(name, labels, value, timestamp, lineno))

    def finish(self):
        for fam in self.families.values():
            if fam.type is None:
                raise PromParseError(0, "family %r has HELP but no TYPE" % fam.name)
            if fam.type == "histogram":
                _check_histogram(fam)
            elif fam.type == "summary":
                _check_summary(fam)
        return self.families


def _fmt_labels(labels):
    return "{" + ",".join('%s="%s"' % kv for kv in sorted(labels.items())) + "}"


def _group(fam, strip):
    groups = {}
    for s in fam.samples:
        key = frozenset((k, v) for k, v in s.labels.items() if k != strip)
        groups.setdefault(key, []).append(s)
    return groups


def _check_histogram(fam):
    for key, samples in _group(fam, "le").items():
        where = fam.name + _fmt_labels(dict(key))
        buckets = [s for s in samples if s.name == fam.name + "_bucket"]
        sums = [s for s in samples if s.name == fam.name + "_sum"]
        counts = [s for s in samples if s.name == fam.name + "_count"]
        if not buckets or buckets[-1].labels["le"] != "+Inf":
            line = buckets[-1].lineno if buckets else samples[0].lineno
            raise PromParseError(line, "histogram %s has no le=\"+Inf\" bucket last" % where)
        prev_le, prev_count = -math.inf, 0.0
        for s in buckets:
            le = parse_float(s.labels["le"], s.lineno, "le label")
            if math.isnan(le) or le <= prev_le:
                raise PromParseError(s.lineno, "histogram %s: le not strictly increasing" % where)
            if math.isnan(s.value) or s.value < prev_count:
                raise PromParseError(s.lineno, "histogram %s: buckets not cumulative" % where)
            prev_le, prev_count = le, s.value
        if not sums:
            raise PromParseError(buckets[-1].lineno, "histogram %s has no _sum" % where)
        if not counts:
            raise PromParseError(buckets[-1].lineno, "histogram %s has no _count" % where)
        if counts[0].value != buckets[-1].value:
            raise PromParseError(counts[0].lineno, "histogram %s: _count %r != +Inf bucket %r"
                                 % (where, counts[0].value, buckets[-1].value))


def _check_summary(fam):
    for key, samples in _group(fam, "quantile").items():
        where = fam.name + _fmt_labels(dict(key))
        for s in samples:
            if s.name == fam.name:
                q = parse_float(s.labels["quantile"], s.lineno, "quantile label")
                if not 0 <= q <= 1:
                    raise PromParseError(s.lineno, "summary %s: quantile out of [0, 1]" % where)
        names = {s.name for s in samples}
        for suffix in ("_sum", "_count"):
            if fam.name + suffix not in names:
                raise PromParseError(samples[0].lineno, "summary %s has no %s" % (where, suffix))


def parse(text):
    """Parses a whole exposition (str, or bytes decoded as strict UTF-8)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromParseError(0, "not valid UTF-8 at byte %d" % e.start) from None
    if text and not text.endswith("\n"):
        raise PromParseError(text.count("\n") + 1, "the last line does not end with \\n")
    p = _Parser()
    for lineno, line in enumerate(text.split("\n")[:-1] if text else [], start=1):
        if line.strip(" \t") == "":
            continue
        if line.lstrip(" \t").startswith("#"):
            p.comment(line, lineno)
        else:
            p.sample(line, lineno)
    return p.finish()


def _json_value(v):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return v


def to_json(families):
    return {name: {"type": f.type, "help": f.help,
                   "samples": [{"name": s.name, "labels": s.labels, "value": _json_value(s.value)}
                               for s in f.samples]}
            for name, f in families.items()}


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: promparse.py FILE|-\n")
        return 2
    data = sys.stdin.buffer.read() if argv[1] == "-" else open(argv[1], "rb").read()
    try:
        families = parse(data)
    except PromParseError as e:
        sys.stderr.write("%s\n" % e)
        return 1
    json.dump(to_json(families), sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
