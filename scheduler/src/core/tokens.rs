//! Credentials: people's tokens with roles and agents' join tokens. The core
//! keeps the durable records (role and the secret's hash, never the secret)
//! and keeps the [`TokenIndex`] the auth layer reads in step: a new token is
//! usable once it is durable, a revoked one is refused at once, and revoking
//! an agent's token ends its live session and loses its attempts, as if the
//! agent were gone.

use super::*;
use crate::auth::{self, AgentProof, TokenIndex, AGENT_ROLE};

/// Tokens by (is an agent's, name).
pub(super) type TokenBook = BTreeMap<(bool, String), pb::StoredToken>;

pub(super) fn load_tokens(stored: Vec<pb::StoredToken>, index: &TokenIndex) -> TokenBook {
    let mut book = TokenBook::new();
    for st in stored {
        let Some(t) = st.token.as_ref() else { continue };
        let Some(who) = auth::principal_of(t) else {
            tracing::warn!(token = %t.name, role = %t.role, "skipping a stored token with an unknown role");
            continue;
        };
        index.insert(st.secret_sha256.clone(), who);
        book.insert((t.role == AGENT_ROLE, t.name.clone()), st);
    }
    book
}

/// `agent` or `people` (the two namespaces of token names).
fn kind_is_agent(kind: &str) -> Result<bool, Status> {
    match kind {
        "agent" => Ok(true),
        "people" | "" => Ok(false),
        other => Err(Status::invalid_argument(format!(
            "unknown token kind '{}': use agent or people",
            crate::clip(other)
        ))),
    }
}

impl Core {
    /// Whether any person holds an admin token (start-up: bootstrap one if not).
    pub(super) fn has_admin_token(&self) -> bool {
        self.tokens
            .iter()
            .any(|((agent, _), st)| !agent && st.token.as_ref().is_some_and(|t| t.role == "admin"))
    }

    /// A new token whose secret hashes to `hash` (the secret itself never
    /// reaches the core). Usable once durable.
    pub(super) fn create_token(
        &mut self,
        req: pb::CreateTokenRequest,
        hash: String,
        by: &str,
        step: &mut Step,
    ) -> Result<pb::Token, Status> {
        let name = req.name.trim().to_string();
        let agent = req.role == AGENT_ROLE;
        check_name(if agent { "agent" } else { "token" }, &name)?;
        if !agent && auth::Role::parse(&req.role).is_none() {
            return Err(Status::invalid_argument(format!(
                "unknown role '{}': use viewer, submitter or admin",
                crate::clip(&req.role)
            )));
        }
        if !agent && (!req.labels.is_empty() || !req.profile.is_empty()) {
            return Err(Status::invalid_argument(
                "labels and profile belong on agent tokens (msctl agent token create)",
            ));
        }
        if req.labels.len() > 64
            || req
                .labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 256)
            || req.profile.len() > 256
        {
            return Err(Status::invalid_argument(
                "at most 64 labels, keys of 1-128 and values of at most 256 bytes, a profile of at most 256",
            ));
        }
        if req.labels.contains_key("profile") {
            return Err(Status::invalid_argument(
                "set the hardware profile with --profile, not as a label",
            ));
        }
        if self.tokens.contains_key(&(agent, name.clone())) {
            return Err(Status::already_exists(format!(
                "a{} token named '{name}' exists; revoke it first to make a new one",
                if agent { "n agent" } else { "" }
            )));
        }
        let token = pb::Token {
            name: name.clone(),
            role: req.role,
            created_ms: self.now,
            created_by: by.to_string(),
            labels: req.labels,
            profile: req.profile,
        };
        let stored = pb::StoredToken {
            token: Some(token.clone()),
            secret_sha256: hash.clone(),
        };
        step.writes.put_token(agent, &stored);
        self.tokens.insert((agent, name.clone()), stored);
        if let Some(who) = auth::principal_of(&token) {
            let index = self.token_index.clone();
            step.after.push(Box::new(move |ok| {
                if ok {
                    index.insert(hash, who);
                }
            }));
        }
        tracing::info!(token = %name, role = %token.role, by, "token created");
        Ok(token)
    }

    pub(super) fn list_tokens(&self, kind: &str) -> Result<Vec<pb::Token>, Status> {
        let only = match kind {
            "" => None,
            k => Some(kind_is_agent(k)?),
        };
        Ok(self
            .tokens
            .iter()
            .filter(|((agent, _), _)| only.is_none_or(|a| a == *agent))
            .filter_map(|(_, st)| st.token.clone())
            .collect())
    }

    /// Revokes a token at once. An agent's: its live session (if it came with
    /// this token) ends within this turn and its attempts are lost.
    pub(super) fn revoke_token(
        &mut self,
        name: &str,
        kind: &str,
        by: &str,
        step: &mut Step,
    ) -> Result<pb::Token, Status> {
        let agent = kind_is_agent(kind)?;
        let Some(stored) = self.tokens.remove(&(agent, name.to_string())) else {
            return Err(Status::not_found(format!(
                "no {} token named '{}'",
                if agent { "agent" } else { "people's" },
                crate::clip(name)
            )));
        };
        self.token_index.remove(&stored.secret_sha256);
        step.writes.remove_token(agent, name);
        tracing::info!(token = %name, agent, by, "token revoked");
        if agent {
            self.end_session(
                name,
                AgentProof::Token,
                "the agent's token was revoked",
                step,
            );
        }
        Ok(stored.token.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use super::super::Command;
    use crate::auth::{self, Principal, Role};
    use msfleet_proto::{self as pb, scheduler_message::Msg, JobState::*};

    fn create(
        h: &mut Harness,
        name: &str,
        role: &str,
        profile: &str,
    ) -> Result<(pb::Token, String), tonic::Status> {
        let secret = auth::new_secret().unwrap();
        let req = pb::CreateTokenRequest {
            name: name.into(),
            role: role.into(),
            profile: profile.into(),
            ..Default::default()
        };
        let hash = auth::secret_hash(&secret);
        let t = h.call(|reply| Command::CreateToken {
            req,
            hash,
            by: "root".into(),
            reply,
        })?;
        Ok((t, secret))
    }

    fn revoke(h: &mut Harness, name: &str, kind: &str) -> Result<pb::Token, tonic::Status> {
        let (name, kind) = (name.to_string(), kind.to_string());
        h.call(|reply| Command::RevokeToken {
            name,
            kind,
            by: "root".into(),
            reply,
        })
    }

    fn list(h: &mut Harness, kind: &str) -> Vec<pb::Token> {
        let kind = kind.to_string();
        h.call(|reply| Command::ListTokens { kind, reply }).unwrap()
    }

    #[test]
    fn a_token_works_once_durable_survives_a_reload_and_stops_at_revoke() {
        let mut h = Harness::new();
        let (t, secret) = create(&mut h, "ana", "submitter", "").unwrap();
        assert_eq!(
            (t.role.as_str(), t.created_by.as_str()),
            ("submitter", "root")
        );
        assert_eq!(
            h.tokens.authenticate(&secret),
            Some(Principal::Person {
                name: "ana".into(),
                role: Role::Submitter
            })
        );
        h.reload();
        assert!(h.tokens.authenticate(&secret).is_some(), "loaded again");
        assert_eq!(list(&mut h, "people").len(), 1);
        assert!(list(&mut h, "agent").is_empty());
        revoke(&mut h, "ana", "people").unwrap();
        assert_eq!(h.tokens.authenticate(&secret), None);
        h.reload();
        assert_eq!(h.tokens.authenticate(&secret), None, "revoked for good");
        assert!(list(&mut h, "").is_empty());
    }

    #[test]
    fn bad_token_requests_are_refused_and_change_nothing() {
        let mut h = Harness::new();
        create(&mut h, "ana", "viewer", "").unwrap();
        let dup = create(&mut h, "ana", "admin", "").unwrap_err();
        assert_eq!(dup.code(), tonic::Code::AlreadyExists);
        let role = create(&mut h, "bob", "root", "").unwrap_err();
        assert!(role.message().contains("unknown role 'root'"), "{role}");
        let name = create(&mut h, "bad name", "viewer", "").unwrap_err();
        assert_eq!(name.code(), tonic::Code::InvalidArgument);
        let misplaced = create(&mut h, "carl", "viewer", "gpu-x").unwrap_err();
        assert!(misplaced.message().contains("agent tokens"), "{misplaced}");
        let missing = revoke(&mut h, "nobody", "people").unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        // An agent token and a person's may share a name: two namespaces.
        create(&mut h, "ana", "agent", "").unwrap();
        let names: Vec<(String, String)> = list(&mut h, "")
            .into_iter()
            .map(|t| (t.name, t.role))
            .collect();
        assert_eq!(
            names,
            vec![
                ("ana".into(), "viewer".into()),
                ("ana".into(), "agent".into())
            ]
        );
        assert!(!h.core().has_admin_token());
        create(&mut h, "boss", "admin", "").unwrap();
        assert!(h.core().has_admin_token());
    }

    #[test]
    fn revoking_an_agents_token_ends_its_session_and_its_attempt_runs_elsewhere() {
        let mut h = Harness::new();
        create(&mut h, "a1", "agent", "").unwrap();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.update(&mut a, &r, 1, started());
        revoke(&mut h, "a1", "agent").unwrap();
        // The session's stream ends with Unauthenticated.
        let ended = a.next_status();
        assert_eq!(ended.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
        let view = h.job(&job.id);
        assert_eq!(view.state(), Queued, "{}", view.reason);
        assert!(
            view.reason.contains("the agent's token was revoked"),
            "{}",
            view.reason
        );
        let agents = h.call(|reply| Command::ListAgents { reply }).unwrap();
        assert!(!agents[0].connected);
        // Its late updates are ignored, another agent finishes the job.
        let late = h.update(&mut a, &r, 2, finished(msfleet_proto::Outcome::Passed));
        assert!(late.is_empty());
        let mut b = h.register("b1", "cpu", 1);
        let got = h.assignments(&mut b);
        assert_eq!(got[0].attempt.as_ref().unwrap().attempt, 2);
        h.finish(
            &mut b,
            got[0].attempt.as_ref().unwrap(),
            msfleet_proto::Outcome::Passed,
        );
        assert_eq!(h.state(&job.id), Passed);
        assert!(!h
            .messages(&mut a)
            .iter()
            .any(|m| matches!(m, Msg::Assign(_))));
    }
}
