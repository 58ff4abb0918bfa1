//! What the camera says about itself: the retained state (people in view) and Home Assistant's
//! MQTT discovery configurations (<https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery>).
//! Topics and payloads are documented in `docs/mqtt.md`.

use std::io::Write as _;

use serde_json::json;

use crate::events::{Event, EventKind, Identity};

/// The topics of one camera.
#[derive(Clone, Debug)]
pub struct Topics {
    pub availability: String,
    pub events: String,
    pub state: String,
    /// `<discovery prefix>/status`, if discovery is on.
    pub ha_status: Option<String>,
    discovery_prefix: Option<String>,
    camera: String,
    /// The camera name as Home Assistant's ids allow it (`[a-zA-Z0-9_-]`).
    node: String,
}

impl Topics {
    pub fn new(prefix: &str, camera: &str, discovery_prefix: Option<&str>) -> Self {
        let base = format!("{prefix}/{camera}");
        Topics {
            availability: format!("{base}/availability"),
            events: format!("{base}/events"),
            state: format!("{base}/state"),
            ha_status: discovery_prefix.map(|d| format!("{d}/status")),
            discovery_prefix: discovery_prefix.map(str::to_owned),
            camera: camera.to_owned(),
            node: format!(
                "reidcam_{}",
                camera
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    })
                    .collect::<String>()
            ),
        }
    }

    /// The filter that matches this camera's person entities (to find stale ones).
    pub fn people_filter(&self) -> Option<String> {
        let dp = self.discovery_prefix.as_ref()?;
        Some(format!("{dp}/binary_sensor/{}/+/config", self.node))
    }

    /// The discovery topic of identity `id`'s presence sensor.
    pub fn person_config(&self, id: u32) -> Option<String> {
        let dp = self.discovery_prefix.as_ref()?;
        Some(format!(
            "{dp}/binary_sensor/{}/person_{id}/config",
            self.node
        ))
    }

    /// The identity a discovery topic of this camera is about.
    pub fn person_of(&self, topic: &str) -> Option<u32> {
        let dp = self.discovery_prefix.as_ref()?;
        topic
            .strip_prefix(dp.as_str())?
            .strip_prefix("/binary_sensor/")?
            .strip_prefix(self.node.as_str())?
            .strip_prefix("/person_")?
            .strip_suffix("/config")?
            .parse()
            .ok()
    }

    fn device(&self) -> serde_json::Value {
        json!({
            "identifiers": [self.node],
            "name": format!("reidcam {}", self.camera),
            "manufacturer": "reidcam",
            "model": "reidcam person re-identification camera",
            "sw_version": env!("CARGO_PKG_VERSION"),
        })
    }

    fn entity(&self, name: &str, object: &str) -> serde_json::Value {
        json!({
            "name": name,
            "unique_id": format!("{}_{object}", self.node),
            "object_id": format!("{}_{object}", self.node),
            "state_topic": self.state,
            "availability_topic": self.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self.device(),
        })
    }

    /// Discovery configurations (topic, payload), all published retained: the camera's
    /// sensors, and a presence sensor for each labelled identity.
    pub fn discovery(&self, labelled: &[(u32, String)]) -> Vec<(String, Vec<u8>)> {
        let Some(dp) = &self.discovery_prefix else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut people = self.entity("People in view", "people");
        people["value_template"] = json!("{{ value_json.people }}");
        people["state_class"] = json!("measurement");
        people["icon"] = json!("mdi:account-group");
        out.push((format!("{dp}/sensor/{}/people/config", self.node), people));
        let mut dropped = self.entity("Events dropped", "dropped_events");
        dropped["value_template"] = json!("{{ value_json.dropped_events }}");
        dropped["state_class"] = json!("total_increasing");
        dropped["entity_category"] = json!("diagnostic");
        out.push((
            format!("{dp}/sensor/{}/dropped_events/config", self.node),
            dropped,
        ));
        for (id, label) in labelled {
            let object = format!("person_{id}");
            let mut presence = self.entity(label, &object);
            presence["device_class"] = json!("presence");
            presence["value_template"] = json!(format!(
                "{{{{ 'ON' if {id} in value_json.present else 'OFF' }}}}"
            ));
            out.push((self.person_config(*id).expect("discovery is on"), presence));
        }
        out.into_iter()
            .map(|(topic, payload)| (topic, payload.to_string().into_bytes()))
            .collect()
    }
}

/// A decided track in view.
#[derive(Clone, Debug, Default)]
struct InView {
    track: u64,
    id: Option<u32>,
    label: String,
}

/// The people in view, kept from the events (a track counts from its first decision to its
/// `leave`), written as the state payload.
#[derive(Debug)]
pub struct View {
    tracks: Vec<InView>,
    spare: Vec<InView>,
}

/// Tracks the view holds without allocating (more are held, by growing).
const VIEW_TRACKS: usize = 64;

impl Default for View {
    fn default() -> Self {
        let spare = (0..VIEW_TRACKS)
            .map(|_| InView {
                label: String::with_capacity(crate::gallery::LABEL_CAPACITY),
                ..Default::default()
            })
            .collect();
        View {
            tracks: Vec::with_capacity(VIEW_TRACKS),
            spare,
        }
    }
}

impl View {
    /// Applies an event; returns the labelled identity it names, if any.
    pub fn apply<'e>(&mut self, event: &Event<'e>) -> Option<(u32, &'e str)> {
        if let Identity::Merged {
            id, label, merged, ..
        } = event.identity
        {
            // Not a track's event: the tracks naming `merged` name `id` now.
            for t in self.tracks.iter_mut().filter(|t| t.id == Some(merged.0)) {
                t.id = Some(id.0);
                t.label.clear();
                t.label.push_str(label.unwrap_or(""));
            }
            return label.map(|l| (id.0, l));
        }
        let pos = self.tracks.iter().position(|t| t.track == event.track);
        if event.event == EventKind::Leave {
            if let Some(p) = pos {
                let gone = self.tracks.swap_remove(p);
                self.spare.push(gone);
            }
            return None;
        }
        let (id, label) = match event.identity {
            Identity::Known { id, label, .. } => (Some(id.0), label),
            Identity::New { id, label, .. } => (Some(id.0), label),
            Identity::Ambiguous { .. } | Identity::Unstored { .. } | Identity::Merged { .. } => {
                (None, None)
            }
        };
        let slot = match pos {
            Some(p) => &mut self.tracks[p],
            None => {
                let mut fresh = self.spare.pop().unwrap_or_default();
                fresh.track = event.track;
                self.tracks.push(fresh);
                self.tracks.last_mut().expect("just pushed")
            }
        };
        slot.id = id;
        slot.label.clear();
        slot.label.push_str(label.unwrap_or(""));
        id.zip(label)
    }

    /// The state payload without its closing brace: the publisher adds its own counters.
    pub fn write_open(&self, out: &mut Vec<u8>) {
        // Each identity once (two tracks may hold the same one), in track order.
        let unique = || {
            self.tracks.iter().enumerate().filter_map(|(n, t)| {
                let id = t.id?;
                (!self.tracks[..n].iter().any(|o| o.id == Some(id))).then_some((id, t))
            })
        };
        out.clear();
        let _ = write!(out, "{{\"people\":{},\"present\":[", self.tracks.len());
        for (n, (id, _)) in unique().enumerate() {
            let _ = write!(out, "{}{id}", if n == 0 { "" } else { "," });
        }
        out.extend_from_slice(b"],\"identities\":[");
        for (n, (id, t)) in unique().enumerate() {
            let _ = write!(out, "{}{{\"id\":{id}", if n == 0 { "" } else { "," });
            if !t.label.is_empty() {
                out.extend_from_slice(b",\"label\":");
                let _ = serde_json::to_writer(&mut *out, &t.label);
            }
            out.push(b'}');
        }
        out.push(b']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gallery::{PersonId, Timestamp};

    fn event(kind: EventKind, track: u64, identity: Identity<'static>) -> Event<'static> {
        Event {
            event: kind,
            camera: "door",
            track,
            time: Timestamp(0),
            stream_ms: 0,
            frame: 0,
            frame_name: "",
            bbox: [0, 0, 1, 1],
            identity,
            first_seen: Timestamp(0),
            frames_seen: 1,
            embeddings: 1,
            crop: None,
            pixels: None,
        }
    }

    fn state(view: &View) -> serde_json::Value {
        let mut out = Vec::new();
        view.write_open(&mut out);
        out.extend_from_slice(b",\"dropped_events\":0}");
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn the_view_follows_enter_update_and_leave() {
        let mut view = View::default();
        let alice = Identity::Known {
            id: PersonId(3),
            label: Some("al\"ice"),
            similarity: 0.9,
            runner_up: None,
        };
        assert_eq!(
            view.apply(&event(EventKind::Enter, 1, alice)),
            Some((3, "al\"ice"))
        );
        let new = Identity::New {
            id: PersonId(4),
            label: None,
            closest: None,
        };
        assert_eq!(view.apply(&event(EventKind::Enter, 2, new)), None);
        let s = state(&view);
        assert_eq!(s["people"], 2);
        assert_eq!(s["present"], json!([3, 4]));
        assert_eq!(s["identities"][0]["label"], "al\"ice");
        view.apply(&event(EventKind::Leave, 1, alice));
        let s = state(&view);
        assert_eq!(
            (s["people"].clone(), s["present"].clone()),
            (json!(1), json!([4]))
        );
    }

    #[test]
    fn discovery_has_unique_ids_and_the_camera_device() {
        let topics = Topics::new("reidcam", "front.door", Some("homeassistant"));
        let configs = topics.discovery(&[(7, "alice".into())]);
        assert_eq!(configs.len(), 3);
        let (topic, payload) = &configs[2];
        assert_eq!(
            topic,
            "homeassistant/binary_sensor/reidcam_front_door/person_7/config"
        );
        let p: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(p["unique_id"], "reidcam_front_door_person_7");
        assert_eq!(p["state_topic"], "reidcam/front.door/state");
        assert_eq!(p["device"]["identifiers"][0], "reidcam_front_door");
        assert_eq!(
            p["value_template"],
            "{{ 'ON' if 7 in value_json.present else 'OFF' }}"
        );
        assert!(Topics::new("r", "c", None).discovery(&[]).is_empty());
        assert_eq!(topics.person_of(topic), Some(7));
        for other in [
            "homeassistant/binary_sensor/reidcam_other/person_7/config",
            "homeassistant/binary_sensor/reidcam_front_door/person_x/config",
            "homeassistant/sensor/reidcam_front_door/people/config",
        ] {
            assert_eq!(topics.person_of(other), None, "{other}");
        }
    }
}
