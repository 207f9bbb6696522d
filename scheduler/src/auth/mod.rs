//! Who is calling and what they may do.
//!
//! Every RPC has an owner role in [`RULES`]; a method without a row is refused
//! to everyone ([`need`]). People carry bearer tokens with a [`Role`]; agents
//! carry a join token bound to their name, or a client certificate signed by
//! the scheduler's `--client-ca` whose name is theirs. [`layer`] checks the
//! credential of every request before any service sees it and hands the
//! service the [`Principal`]; what a principal may touch beyond its role (its
//! own jobs, its own attempts) is checked where that data lives, in the core.
//!
//! Secrets are kept only as SHA-256 hashes ([`TokenIndex`]), never logged.

pub mod layer;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::RwLock;

/// What a person's token allows. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Every read.
    Viewer,
    /// Submit, and cancel one's own jobs.
    Submitter,
    /// Everything: agents, queues, baselines, schedules, tokens, any job.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "submitter" => Some(Role::Submitter),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
        }
    }
}

/// The role an agent token has in stored records and listings.
pub const AGENT_ROLE: &str = "agent";

/// How an agent proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentProof {
    Token,
    Certificate,
}

/// Who is calling, as the scheduler established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Person {
        name: String,
        role: Role,
    },
    Agent {
        name: String,
        /// Labels and profile set by the admin on the token (empty for certificates).
        labels: BTreeMap<String, String>,
        profile: String,
        proof: AgentProof,
    },
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Person { name, .. } | Principal::Agent { name, .. } => name,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Principal::Person {
                role: Role::Admin,
                ..
            }
        )
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Person { name, role } => write!(f, "{name} ({})", role.label()),
            Principal::Agent { name, .. } => write!(f, "agent {name}"),
        }
    }
}

/// What a method asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No credential (gRPC health).
    Open,
    /// A person with at least this role.
    Person(Role),
    /// An agent (token or certificate).
    Agent,
}

const FLEET: &str = "/msfleet.v1.Fleet/";
const AGENT_LINK: &str = "/msfleet.v1.AgentLink/";

/// The owner role of every RPC of both msfleet services.
pub const RULES: &[(&str, &str, Need)] = &[
    (FLEET, "Submit", Need::Person(Role::Submitter)),
    (FLEET, "GetJob", Need::Person(Role::Viewer)),
    (FLEET, "ListJobs", Need::Person(Role::Viewer)),
    (FLEET, "CancelJob", Need::Person(Role::Submitter)),
    (FLEET, "WatchJob", Need::Person(Role::Viewer)),
    (FLEET, "ListAgents", Need::Person(Role::Viewer)),
    (FLEET, "SetAgentAdmin", Need::Person(Role::Admin)),
    (FLEET, "CheckAgent", Need::Person(Role::Admin)),
    (FLEET, "ListQueues", Need::Person(Role::Viewer)),
    (FLEET, "ListBaselines", Need::Person(Role::Viewer)),
    (FLEET, "AcceptBaselines", Need::Person(Role::Admin)),
    (FLEET, "AddSchedule", Need::Person(Role::Admin)),
    (FLEET, "ListSchedules", Need::Person(Role::Viewer)),
    (FLEET, "GetSchedule", Need::Person(Role::Viewer)),
    (FLEET, "SetSchedulePaused", Need::Person(Role::Admin)),
    (FLEET, "DeleteSchedule", Need::Person(Role::Admin)),
    (FLEET, "RunScheduleNow", Need::Person(Role::Admin)),
    (FLEET, "TestHistory", Need::Person(Role::Viewer)),
    (FLEET, "CreateToken", Need::Person(Role::Admin)),
    (FLEET, "ListTokens", Need::Person(Role::Admin)),
    (FLEET, "RevokeToken", Need::Person(Role::Admin)),
    (FLEET, "ForgetAgent", Need::Person(Role::Admin)),
    (AGENT_LINK, "Session", Need::Agent),
    (AGENT_LINK, "GetBaselines", Need::Agent),
];

/// What the method at `path` (`/package.Service/Method`) needs; `None` for a
/// method without a rule, which is refused to everyone.
pub fn need(path: &str) -> Option<Need> {
    if path.starts_with("/grpc.health.v1.Health/") {
        return Some(Need::Open);
    }
    if path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
    {
        return Some(Need::Person(Role::Viewer));
    }
    RULES
        .iter()
        .find(|(service, method, _)| {
            path.strip_prefix(service)
                .is_some_and(|rest| rest == *method)
        })
        .map(|&(_, _, need)| need)
}

/// The secret of an `authorization: Bearer SECRET` header value (gRPC and
/// HTTP alike); `None` when there is no header, the refusal says what to fix.
pub fn bearer_secret(value: Option<&http::HeaderValue>) -> Result<Option<&str>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the authorization header is not text".to_string())?;
    let malformed = || "the authorization header must be 'Bearer TOKEN'".to_string();
    let (scheme, secret) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err(malformed());
    }
    Ok(Some(secret.trim()))
}

/// Whether `who` may call a method that needs `need`; the refusal says why.
pub fn admit(who: &Principal, need: Need) -> Result<(), String> {
    match (need, who) {
        (Need::Open, _) => Ok(()),
        (Need::Person(min), Principal::Person { role, .. }) if *role >= min => Ok(()),
        (Need::Person(min), Principal::Person { name, role }) => Err(format!(
            "token '{name}' has role {}; this needs {} or higher",
            role.label(),
            min.label()
        )),
        (Need::Person(_), Principal::Agent { name, .. }) => Err(format!(
            "agent {name}'s credential is for the agent link only, not for the user API"
        )),
        (Need::Agent, Principal::Agent { .. }) => Ok(()),
        (Need::Agent, Principal::Person { name, .. }) => Err(format!(
            "token '{name}' is a person's; only an agent's token or certificate may use the agent link"
        )),
    }
}

/// Prefix of every secret this scheduler makes (easy to spot in a leak scan).
pub const SECRET_PREFIX: &str = "msfleet_";

/// A new random secret: the prefix and 256 bits, hex.
pub fn new_secret() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes)?;
    let mut s = String::with_capacity(SECRET_PREFIX.len() + 64);
    s.push_str(SECRET_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// SHA-256 of a secret, hex: what is stored and looked up.
pub fn secret_hash(secret: &str) -> String {
    let d = digest::digest(&digest::SHA256, secret.trim().as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The live token hashes, read by [`layer`] on every request and changed by
/// the core: a new token once it is durable, a revoked one at once.
#[derive(Debug, Default)]
pub struct TokenIndex {
    by_hash: RwLock<HashMap<String, Principal>>,
}

impl TokenIndex {
    /// The principal a bearer secret stands for.
    pub fn authenticate(&self, secret: &str) -> Option<Principal> {
        let hash = secret_hash(secret);
        self.by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .cloned()
    }

    pub fn insert(&self, hash: String, who: Principal) {
        self.by_hash
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, who);
    }

    pub fn remove(&self, hash: &str) {
        self.by_hash
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
    }
}

/// The principal a stored token stands for, if its role is known.
pub fn principal_of(t: &msfleet_proto::Token) -> Option<Principal> {
    if t.role == AGENT_ROLE {
        return Some(Principal::Agent {
            name: t.name.clone(),
            labels: t
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            profile: t.profile.clone(),
            proof: AgentProof::Token,
        });
    }
    Role::parse(&t.role).map(|role| Principal::Person {
        name: t.name.clone(),
        role,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_names_a_method_once_and_unknown_methods_have_none() {
        let mut seen = std::collections::BTreeSet::new();
        for (service, method, _) in RULES {
            assert!(seen.insert(format!("{service}{method}")), "{method} twice");
        }
        assert_eq!(
            need("/msfleet.v1.Fleet/Submit"),
            Some(Need::Person(Role::Submitter))
        );
        assert_eq!(need("/msfleet.v1.Fleet/SubmitX"), None);
        assert_eq!(need("/msfleet.v1.Fleet/"), None);
        assert_eq!(need("/grpc.health.v1.Health/Check"), Some(Need::Open));
    }

    #[test]
    fn roles_include_the_ones_below_and_agents_stay_on_their_link() {
        let person = |role| Principal::Person {
            name: "p".into(),
            role,
        };
        let agent = Principal::Agent {
            name: "a".into(),
            labels: BTreeMap::new(),
            profile: String::new(),
            proof: AgentProof::Token,
        };
        assert!(admit(&person(Role::Admin), Need::Person(Role::Submitter)).is_ok());
        assert!(admit(&person(Role::Submitter), Need::Person(Role::Viewer)).is_ok());
        let e = admit(&person(Role::Viewer), Need::Person(Role::Submitter)).unwrap_err();
        assert_eq!(
            e,
            "token 'p' has role viewer; this needs submitter or higher"
        );
        assert!(admit(&agent, Need::Person(Role::Viewer)).is_err());
        assert!(admit(&agent, Need::Agent).is_ok());
        assert!(admit(&person(Role::Admin), Need::Agent).is_err());
    }

    #[test]
    fn secrets_are_random_and_only_their_hash_finds_them() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        let index = TokenIndex::default();
        let who = Principal::Person {
            name: "ana".into(),
            role: Role::Viewer,
        };
        index.insert(secret_hash(&a), who.clone());
        assert_eq!(index.authenticate(&a), Some(who));
        assert_eq!(
            index.authenticate(&format!("{a}\n")),
            index.authenticate(&a)
        );
        assert_eq!(index.authenticate(&b), None);
        index.remove(&secret_hash(&a));
        assert_eq!(index.authenticate(&a), None);
        assert_ne!(secret_hash(&a), a, "the hash is not the secret");
    }
}
