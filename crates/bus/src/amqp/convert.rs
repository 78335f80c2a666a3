//! Between the bus's messages and AMQP's properties and headers.

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::message::{Headers, Message};
use crate::topology::Route;

/// A message ready to be sent, kept whole so that it can be sent again.
pub(crate) struct Outgoing {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub properties: BasicProperties,
    pub body: Bytes,
}

impl Outgoing {
    /// `route` and `message` are checked (names within AMQP's limits) by the caller.
    pub fn new(route: &Route, message: &Message) -> Self {
        let mut properties = BasicProperties::default();
        if route.persistent {
            properties = properties.with_delivery_mode(2);
        }
        if let Some(id) = &message.id {
            properties = properties.with_message_id(id.as_str().into());
        }
        if !message.headers.is_empty() {
            let mut table = FieldTable::default();
            for (key, value) in &message.headers {
                table.insert(
                    key.as_str().into(),
                    AMQPValue::LongString(LongString::from(value.as_str())),
                );
            }
            properties = properties.with_headers(table);
        }
        Self {
            exchange: route.exchange.as_str().into(),
            routing_key: route.routing_key.as_str().into(),
            properties,
            body: message.body.clone(),
        }
    }
}

/// The message of a delivery. Headers set by others than drover (RabbitMQ's `x-death`, numbers)
/// are kept when they are strings or numbers, and dropped otherwise.
pub(crate) fn incoming(properties: &BasicProperties, data: Vec<u8>) -> Message {
    let mut headers = Headers::new();
    if let Some(table) = properties.headers() {
        for (key, value) in table {
            if let Some(text) = header_text(value) {
                headers.insert(key.to_string(), text);
            }
        }
    }
    Message {
        id: properties.message_id().as_ref().map(ToString::to_string),
        headers,
        body: Bytes::from(data),
    }
}

fn header_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_id_survive_the_round_trip() {
        let message = Message::new("body")
            .with_id("t1")
            .with_header("x-drover-reason", "malformed: ü");
        let route = Route {
            exchange: "e".into(),
            routing_key: "k".into(),
            persistent: true,
        };
        let outgoing = Outgoing::new(&route, &message);
        assert_eq!(*outgoing.properties.delivery_mode(), Some(2));
        assert_eq!(incoming(&outgoing.properties, b"body".to_vec()), message);
    }
}
