//! Reading a service's Prometheus registry in tests.

use prometheus::proto::MetricType;
use prometheus::Registry;

/// The value of counter or gauge `name`, summed over the series whose labels include
/// every pair of `labels` (all series when `labels` is empty); 0 when absent.
pub fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for family in registry.gather().iter().filter(|f| f.name() == name) {
        let counter = family.get_field_type() == MetricType::COUNTER;
        for m in family.get_metric() {
            let matches = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if matches {
                sum += if counter {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                };
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use prometheus::{IntCounterVec, IntGauge, Opts};

    use super::*;

    #[test]
    fn sums_matching_series() {
        let registry = Registry::new();
        let c = IntCounterVec::new(Opts::new("c_total", "c"), &["kind", "mode"]).unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.with_label_values(&["a", "x"]).inc_by(2);
        c.with_label_values(&["a", "y"]).inc_by(3);
        c.with_label_values(&["b", "x"]).inc_by(5);
        let g = IntGauge::new("g", "g").unwrap();
        registry.register(Box::new(g.clone())).unwrap();
        g.set(7);
        assert_eq!(metric(&registry, "c_total", &[]), 10.0);
        assert_eq!(metric(&registry, "c_total", &[("kind", "a")]), 5.0);
        assert_eq!(
            metric(&registry, "c_total", &[("kind", "a"), ("mode", "x")]),
            2.0
        );
        assert_eq!(metric(&registry, "g", &[]), 7.0);
        assert_eq!(metric(&registry, "absent", &[]), 0.0);
    }
}
