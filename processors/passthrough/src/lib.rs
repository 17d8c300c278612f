//! # eip-passthrough
//!
//! The runtime's reference processor: it decodes every record of its inputs as an
//! `eip.orders.OrderPlaced` (through the registry, with the writer-schema cache), and produces
//! it re-encoded to one output topic, same key. Anything that is not a valid `OrderPlaced` is
//! poison and goes to the input's DLQ. It is the demo job, the subject of the end-to-end and
//! fault tests, and the runtime side of the pass-through benchmark.

use std::sync::Arc;

use eip_runtime::config::{ConfigError, Section};
use eip_runtime::processor::decode_with;
use eip_runtime::{Envelope, Output, ProcessError, Processor, Record};
use eip_schemas::Codec;
use eip_schemas::types::OrderPlaced;
use serde::{Deserialize, Serialize};

/// `[processor]` settings of the pass-through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassthroughConfig {
    /// Topic every valid record is forwarded to.
    pub output: String,
}

impl Default for PassthroughConfig {
    fn default() -> Self {
        PassthroughConfig {
            output: "orders.validated".into(),
        }
    }
}

impl Section for PassthroughConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.output.trim().is_empty() {
            return Err(ConfigError::invalid("output", "must name a topic"));
        }
        Ok(())
    }
}

/// Forwards decoded `OrderPlaced` records to one topic.
#[derive(Debug, Clone)]
pub struct Passthrough {
    output: Arc<str>,
}

impl Passthrough {
    /// A pass-through to `config.output`.
    pub fn new(config: &PassthroughConfig) -> Passthrough {
        Passthrough {
            output: config.output.as_str().into(),
        }
    }
}

impl Processor for Passthrough {
    type Input = OrderPlaced;

    fn name(&self) -> &str {
        "passthrough"
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.output.to_string()]
    }

    async fn decode(&self, codec: &Codec, record: &Record) -> Result<OrderPlaced, ProcessError> {
        decode_with(codec, record).await
    }

    async fn process(&self, input: Envelope<OrderPlaced>) -> Result<Vec<Output>, ProcessError> {
        Ok(vec![Output::record(
            self.output.clone(),
            input.key,
            input.value,
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eip_runtime::Position;
    use eip_runtime::trace::TraceContext;
    use eip_schemas::types::samples::order_placed;

    #[test]
    fn given_an_order_when_processed_then_it_is_forwarded_with_its_key() {
        let p = Passthrough::new(&PassthroughConfig {
            output: "out".into(),
        });
        let order = order_placed(3);
        let envelope = Envelope {
            value: order.clone(),
            key: Some("order-00000003".into()),
            headers: Default::default(),
            position: Position {
                topic: "in".into(),
                partition: 0,
                offset: 9,
                timestamp_ms: None,
            },
            trace: TraceContext::new_root(),
            correlation_id: "c".into(),
        };
        let rt = std::thread::spawn(move || futures_lite_block_on(p.process(envelope)));
        let outputs = rt.join().unwrap().unwrap();
        assert_eq!(outputs.len(), 1);
        assert_eq!(&*outputs[0].topic, "out");
        assert_eq!(outputs[0].key.as_deref(), Some(&b"order-00000003"[..]));
        assert!(format!("{:?}", outputs[0].payload).contains("eip.orders.OrderPlaced"));
    }

    #[test]
    fn an_empty_output_is_a_config_error() {
        let err = PassthroughConfig { output: " ".into() }
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("output"));
    }

    /// Drives a future that never waits (the pass-through is pure) to completion.
    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}
