//! The simulated compute service's state: servers, their build outcome, and the counters tests
//! read. Pure logic over an explicit clock, so it is tested without HTTP or sleeps.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::SimConfig;

/// The metadata keys that identify the node instance a server was made for: two live servers
/// with the same values are a duplicate (drover's nova driver sets both).
pub const IDENTITY_KEYS: [&str; 2] = ["drover_deployment_id", "drover_node_instance_id"];

/// How a server's build ends, drawn when it is created.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Active,
    Error,
    Stuck,
}

struct SimServer {
    id: String,
    name: String,
    metadata: BTreeMap<String, String>,
    created: Instant,
    fate: Fate,
    ip: String,
}

/// What the cloud saw, served at `GET /_sim/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Compute API requests, refused ones included.
    pub requests: u64,
    /// Requests refused with 429.
    pub rate_limited: u64,
    /// Requests failed on purpose with 500/503 before doing anything.
    pub injected_errors: u64,
    /// Creates and deletes carried out but answered 500.
    pub lost_responses: u64,
    /// Creations refused for quota.
    pub quota_refused: u64,
    /// Servers created, deleted, and alive now.
    pub created: u64,
    pub deleted: u64,
    pub alive: usize,
    /// Servers whose build ended (or will end) in ERROR, and that stay in BUILD for ever.
    pub errored: u64,
    pub stuck: u64,
    /// Creations of a server whose identity metadata a live server already carried.
    pub duplicates: u64,
    /// The identities of those duplicates (`deployment/node instance`), with how many extra
    /// servers each got.
    pub duplicates_per_instance: BTreeMap<String, u64>,
}

/// A create request, as `POST /servers` carries it.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub min_count: usize,
    pub max_count: usize,
}

/// Why a create was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateError {
    BadRequest(String),
    Quota {
        requested: usize,
        used: usize,
        quota: usize,
    },
}

/// The servers and counters of one simulated project.
pub struct Cloud {
    config: SimConfig,
    /// Servers by creation order (for stable listing and markers); ids map to their sequence.
    servers: BTreeMap<u64, SimServer>,
    /// Every id ever made, deleted ones too: as in Nova, a deleted server is a valid marker.
    by_id: HashMap<String, u64>,
    next: u64,
    rng: StdRng,
    stats: Stats,
}

impl Cloud {
    pub fn new(config: SimConfig) -> Self {
        Cloud {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            servers: BTreeMap::new(),
            by_id: HashMap::new(),
            next: 0,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.alive = self.servers.len();
        stats
    }

    /// Counts a compute request and decides whether it fails on purpose.
    pub fn roll_error(&mut self) -> bool {
        self.stats.requests += 1;
        let failed = roll(&mut self.rng, self.config.error_rate);
        self.stats.injected_errors += u64::from(failed);
        failed
    }

    pub fn count_rate_limited(&mut self) {
        self.stats.requests += 1;
        self.stats.rate_limited += 1;
    }

    /// Decides whether a create or delete that was carried out loses its response.
    pub fn roll_lost_response(&mut self) -> bool {
        let lost = roll(&mut self.rng, self.config.lost_response_rate);
        self.stats.lost_responses += u64::from(lost);
        lost
    }

    /// Creates `max_count` servers, or as many down to `min_count` as the quota allows, named
    /// as Nova names them (`name-1`, `name-2`, … when more than one). Returns their ids.
    pub fn create(
        &mut self,
        request: CreateRequest,
        now: Instant,
    ) -> Result<Vec<String>, CreateError> {
        let CreateRequest {
            name,
            metadata,
            min_count,
            max_count,
        } = request;
        if min_count == 0 || min_count > max_count {
            return Err(CreateError::BadRequest(format!(
                "min_count {min_count} must be at least 1 and at most max_count {max_count}"
            )));
        }
        if max_count > self.config.max_count {
            return Err(CreateError::BadRequest(format!(
                "max_count {max_count} exceeds this cloud's limit of {}",
                self.config.max_count
            )));
        }
        let used = self.servers.len();
        let count = match self.config.quota_instances {
            Some(quota) if used + max_count > quota => {
                if used + min_count > quota {
                    self.stats.quota_refused += 1;
                    return Err(CreateError::Quota {
                        requested: min_count,
                        used,
                        quota,
                    });
                }
                quota - used
            }
            _ => max_count,
        };
        let identity = identity(&metadata);
        if let Some(identity) = &identity {
            let live = self
                .servers
                .values()
                .filter(|s| self::identity(&s.metadata).as_ref() == Some(identity))
                .count();
            let extra = live as u64 + count as u64 - 1;
            if extra > 0 {
                self.stats.duplicates += extra;
                *self
                    .stats
                    .duplicates_per_instance
                    .entry(identity.clone())
                    .or_default() += extra;
            }
        }
        let mut ids = Vec::with_capacity(count);
        for i in 1..=count {
            self.next += 1;
            let seq = self.next;
            let id = uuid(&mut self.rng);
            let draw: f64 = self.rng.random();
            let fate = if draw < self.config.build_error_rate {
                self.stats.errored += 1;
                Fate::Error
            } else if draw < self.config.build_error_rate + self.config.stuck_rate {
                self.stats.stuck += 1;
                Fate::Stuck
            } else {
                Fate::Active
            };
            let server_name = if count > 1 {
                format!("{name}-{i}")
            } else {
                name.clone()
            };
            let ip = format!(
                "10.{}.{}.{}",
                (seq >> 16) & 0xff,
                (seq >> 8) & 0xff,
                seq & 0xff
            );
            self.by_id.insert(id.clone(), seq);
            self.servers.insert(
                seq,
                SimServer {
                    id: id.clone(),
                    name: server_name,
                    metadata: metadata.clone(),
                    created: now,
                    fate,
                    ip,
                },
            );
            self.stats.created += 1;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Deletes a server; false when there is none with that id.
    pub fn delete(&mut self, id: &str) -> bool {
        let removed = self.by_id.get(id).and_then(|seq| self.servers.remove(seq));
        self.stats.deleted += u64::from(removed.is_some());
        removed.is_some()
    }

    /// One server in Nova's detail shape, seen at `now`.
    pub fn show(&self, id: &str, now: Instant) -> Option<Value> {
        let seq = self.by_id.get(id)?;
        self.servers.get(seq).map(|s| self.detail(s, now))
    }

    /// `GET /servers/detail`: servers old enough to be listed (eventual consistency), whose
    /// metadata holds every pair of `metadata`, after `marker`, at most `limit`. The second
    /// value is the marker of the next page, when there may be one.
    pub fn list(
        &self,
        metadata: &BTreeMap<String, String>,
        marker: Option<&str>,
        limit: usize,
        now: Instant,
    ) -> Result<(Vec<Value>, Option<String>), String> {
        let start = match marker {
            Some(marker) => {
                *self
                    .by_id
                    .get(marker)
                    .ok_or_else(|| format!("marker [{marker}] not found"))?
                    + 1
            }
            None => 0,
        };
        let delay = Duration::from_millis(self.config.list_delay_ms);
        let page: Vec<&SimServer> = self
            .servers
            .range(start..)
            .map(|(_, s)| s)
            .filter(|s| now.saturating_duration_since(s.created) >= delay)
            .filter(|s| metadata.iter().all(|(k, v)| s.metadata.get(k) == Some(v)))
            .take(limit)
            .collect();
        let next = (page.len() == limit)
            .then(|| page.last().map(|s| s.id.clone()))
            .flatten();
        Ok((
            page.into_iter().map(|s| self.detail(s, now)).collect(),
            next,
        ))
    }

    fn detail(&self, server: &SimServer, now: Instant) -> Value {
        let built = now.saturating_duration_since(server.created)
            >= Duration::from_millis(self.config.build_ms);
        let status = match (built, server.fate) {
            (false, _) | (true, Fate::Stuck) => "BUILD",
            (true, Fate::Active) => "ACTIVE",
            (true, Fate::Error) => "ERROR",
        };
        let addresses = if status == "ACTIVE" {
            json!({"private": [{"addr": server.ip, "version": 4, "OS-EXT-IPS:type": "fixed"}]})
        } else {
            json!({})
        };
        let mut detail = json!({
            "id": server.id,
            "name": server.name,
            "status": status,
            "metadata": server.metadata,
            "addresses": addresses,
            "tenant_id": self.config.project,
        });
        if status == "ERROR" {
            detail["fault"] = json!({"code": 500, "message": "No valid host was found."});
        }
        detail
    }
}

/// `deployment/node instance` when the metadata carries both identity keys.
fn identity(metadata: &BTreeMap<String, String>) -> Option<String> {
    let [deployment, instance] = IDENTITY_KEYS.map(|k| metadata.get(k));
    Some(format!("{}/{}", deployment?, instance?))
}

fn roll(rng: &mut StdRng, probability: f64) -> bool {
    probability > 0.0 && rng.random::<f64>() < probability
}

fn uuid(rng: &mut StdRng) -> String {
    let n: u128 = rng.random();
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(instance: &str, count: usize) -> CreateRequest {
        CreateRequest {
            name: "vm".into(),
            metadata: BTreeMap::from([
                ("drover_deployment_id".into(), "d".into()),
                ("drover_node_instance_id".into(), instance.into()),
            ]),
            min_count: 1,
            max_count: count,
        }
    }

    #[test]
    fn new_servers_are_listed_only_after_the_delay_but_shown_at_once() {
        let mut cloud = Cloud::new(SimConfig {
            list_delay_ms: 100,
            build_ms: 50,
            ..Default::default()
        });
        let t0 = Instant::now();
        let ids = cloud.create(request("a", 1), t0).unwrap();
        let none = BTreeMap::new();
        assert!(cloud.list(&none, None, 10, t0).unwrap().0.is_empty());
        assert_eq!(cloud.show(&ids[0], t0).unwrap()["status"], "BUILD");
        let later = t0 + Duration::from_millis(100);
        let (listed, _) = cloud.list(&none, None, 10, later).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0]["status"], "ACTIVE");
    }

    #[test]
    fn duplicates_quota_and_metadata_filters() {
        let mut cloud = Cloud::new(SimConfig {
            quota_instances: Some(3),
            ..Default::default()
        });
        let now = Instant::now();
        cloud.create(request("a", 1), now).unwrap();
        cloud.create(request("a", 1), now).unwrap();
        let two = cloud.create(request("b", 2), now);
        assert!(matches!(two, Ok(ref ids) if ids.len() == 1), "{two:?}");
        assert_eq!(
            cloud.create(request("c", 1), now),
            Err(CreateError::Quota {
                requested: 1,
                used: 3,
                quota: 3
            })
        );
        let stats = cloud.stats();
        assert_eq!(
            (
                stats.created,
                stats.alive,
                stats.duplicates,
                stats.quota_refused
            ),
            (3, 3, 1, 1)
        );
        assert_eq!(stats.duplicates_per_instance["d/a"], 1);
        let filter = BTreeMap::from([("drover_node_instance_id".into(), "a".into())]);
        let (page, next) = cloud.list(&filter, None, 1, now).unwrap();
        assert_eq!(page.len(), 1);
        let marker = next.unwrap();
        let (rest, _) = cloud.list(&filter, Some(&marker), 10, now).unwrap();
        assert_eq!(rest.len(), 1);
        assert_ne!(rest[0]["id"], page[0]["id"]);
        assert!(cloud.delete(&marker));
        assert!(!cloud.delete(&marker));
        // A deleted server still marks its place.
        assert_eq!(
            cloud.list(&filter, Some(&marker), 10, now).unwrap().0.len(),
            1
        );
        assert_eq!(cloud.stats().alive, 2);
    }

    #[test]
    fn build_outcomes_follow_the_rates() {
        let mut cloud = Cloud::new(SimConfig {
            build_error_rate: 0.5,
            stuck_rate: 0.5,
            max_count: 1000,
            ..Default::default()
        });
        let now = Instant::now();
        let ids = cloud.create(request("a", 100), now).unwrap();
        let statuses: Vec<Value> = ids
            .iter()
            .map(|id| cloud.show(id, now).unwrap()["status"].clone())
            .collect();
        assert!(statuses.iter().all(|s| s == "ERROR" || s == "BUILD"));
        let stats = cloud.stats();
        assert_eq!(stats.errored + stats.stuck, 100);
        assert!(stats.errored > 0 && stats.stuck > 0);
        // 100 servers of one identity: 99 duplicates.
        assert_eq!(stats.duplicates, 99);
    }
}
