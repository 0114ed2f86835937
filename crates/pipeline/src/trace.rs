//! The spans the pipeline opens, and the trace context that travels with a queued event, so that
//! one webhook is one trace from intake through provisioning to every upstream call.
//! Span fields are ids and names Amplify sent, never a secret or a URL.

use billing_bridge_domain::events::{ResourceEvent, ResourceKind};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The root span of one webhook at intake. The handler records `event_id`, `event_type`,
/// `correlation_id`, `kind`, `resource` and `outcome` as it learns them.
pub fn webhook_span() -> Span {
    tracing::info_span!(
        "webhook",
        otel.kind = "server",
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        kind = tracing::field::Empty,
        resource = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

/// The span of one provisioning pass over `event`: a child of the webhook's span when the event
/// carries its trace context, a root of its own otherwise (the reconciler's events).
pub fn provisioning_span(event: &ResourceEvent) -> Span {
    let name = match event.kind {
        ResourceKind::ProductPlan => "provision_plan",
        ResourceKind::Subscription => "provision_subscription",
    };
    let span = tracing::info_span!(
        "provisioning",
        otel.name = name,
        event_id = %event.event_id,
        correlation_id = event.correlation_id.as_deref().unwrap_or(""),
        kind = ?event.kind,
        resource = %event.name,
        resource_id = %event.resource_id,
        attempt = event.attempt,
        outcome = tracing::field::Empty,
    );
    set_parent(&span, event.trace_parent.as_deref());
    span
}

/// The span of one traffic reporting run (one trace per run): open it with this, record
/// `outcome` when the run ends, and run the work inside it (`.instrument(span)`), so the
/// Traceability and Recurly calls become its children.
pub fn reporting_run_span(trigger: &str, from: &str, to: &str) -> Span {
    tracing::info_span!(
        "reporting_run",
        trigger = trigger,
        window_from = from,
        window_to = to,
        outcome = tracing::field::Empty,
    )
}

/// The W3C `traceparent` of `span` (`00-{trace}-{span}-{flags}`), when traces are exported.
pub fn traceparent(span: &Span) -> Option<String> {
    let context = span.context();
    let span_ref = context.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the span `traceparent` names. Call before the span is first entered.
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(parse_traceparent) {
        // Without an OpenTelemetry layer (traces off) there is nothing to link: not an error.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_as_w3c_writes_them() {
        let parsed =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parsed.is_sampled());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn without_an_exporter_there_is_no_trace_context_to_carry() {
        assert_eq!(traceparent(&webhook_span()), None);
    }
}
