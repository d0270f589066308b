//! One Prometheus exposition for the agent and the collector. Their
//! metrics are values read when the page is rendered (the kernel's
//! counters, the model's counts), not instruments updated on the hot
//! path, so a page is built family by family from those values and
//! encoded by the `prometheus` crate's text encoder (escaping, `+Inf`,
//! number formats).

use std::collections::HashMap;

use prometheus::{
    Encoder as _, TextEncoder,
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

/// What a family is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A page being built: families in the order declared, each with its
/// samples.
#[derive(Default)]
pub struct Page {
    families: Vec<MetricFamily>,
    /// Family name -> index in `families`.
    by_name: HashMap<String, usize>,
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

impl Page {
    /// Declares a family (again: no change). Its samples may follow at once
    /// or later; a family left without samples is not written.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        if self.by_name.contains_key(name) {
            return;
        }
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(match kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
            Kind::Histogram => MetricType::HISTOGRAM,
        });
        self.by_name.insert(name.to_owned(), self.families.len());
        self.families.push(f);
    }

    fn push(&mut self, name: &str, metric: Metric) {
        if let Some(f) = self
            .by_name
            .get(name)
            .and_then(|&i| self.families.get_mut(i))
        {
            f.mut_metric().push(metric);
        }
    }

    /// A sample of counter or gauge family `name` (declared before; one of
    /// an undeclared family, or of a histogram family, is dropped).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let Some(kind) = self
            .by_name
            .get(name)
            .and_then(|&i| self.families.get(i))
            .map(|f| f.get_field_type())
        else {
            return;
        };
        let mut m = Metric::from_label(label_pairs(labels));
        match kind {
            MetricType::HISTOGRAM => return,
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.push(name, m);
    }

    /// A family of one unlabelled counter.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Counter, help);
        self.sample(name, &[], value as f64);
    }

    /// A family of one unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, Kind::Gauge, help);
        self.sample(name, &[], value);
    }

    /// A counter family with one `label` (values sorted, so pages compare).
    pub fn counters<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let mut values: Vec<_> = values.into_iter().collect();
        values.sort_unstable();
        self.family(name, Kind::Counter, help);
        for (l, v) in values {
            self.sample(name, &[(label, l)], v as f64);
        }
    }

    /// A sample of histogram family `name`: `counts` per bucket of
    /// `bounds`, not cumulative (a count past the last bound is not read:
    /// `+Inf` is `count`, all of them).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
        count: u64,
    ) {
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .zip(counts)
            .map(|(&upper, &n)| {
                cumulative += n;
                let mut b = Bucket::default();
                b.set_upper_bound(upper);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_sum(sum);
        h.set_sample_count(count);
        let mut m = Metric::from_label(label_pairs(labels));
        m.set_histogram(h);
        self.push(name, m);
    }

    /// The page in the text format.
    pub fn render(mut self) -> String {
        self.families.retain(|f| !f.get_metric().is_empty());
        let mut out = Vec::new();
        // Refused only for empty families, left out above.
        if TextEncoder::new().encode(&self.families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut p = Page::default();
        p.counter("a_total", "As.", 3);
        p.family("empty", Kind::Gauge, "Never sampled.");
        p.counters("b_total", "Bs.", "kind", [("y", 2), ("x", 1)]);
        p.family("c", Kind::Gauge, "Cs.");
        p.sample("c", &[("name", "a \"quoted\"\nline\\")], 0.5);
        p.sample("undeclared", &[], 1.0);
        p.family("d_seconds", Kind::Histogram, "Ds.");
        p.histogram("d_seconds", &[("e", "f")], &[0.1, 1.0], &[1, 2, 4], 9.5, 7);
        assert_eq!(
            p.render(),
            "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n\
             # HELP b_total Bs.\n# TYPE b_total counter\n\
             b_total{kind=\"x\"} 1\nb_total{kind=\"y\"} 2\n\
             # HELP c Cs.\n# TYPE c gauge\n\
             c{name=\"a \\\"quoted\\\"\\nline\\\\\"} 0.5\n\
             # HELP d_seconds Ds.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{e=\"f\",le=\"0.1\"} 1\n\
             d_seconds_bucket{e=\"f\",le=\"1\"} 3\n\
             d_seconds_bucket{e=\"f\",le=\"+Inf\"} 7\n\
             d_seconds_sum{e=\"f\"} 9.5\nd_seconds_count{e=\"f\"} 7\n"
        );
    }
}
