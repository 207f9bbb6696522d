//! `msctl token ...` and `msctl agent token ...`: credentials. A new token's
//! secret is printed once, alone on the last line, so that
//! `msctl token create ci --role submitter | tail -n1 > ci.token` works; the
//! scheduler keeps only its hash and listings never show it.

use crate::cli::{AgentTokenAction, TokenAction};
use crate::commands::print_json;
use crate::render;
use crate::{exit, Client, CtlError};
use msfleet_proto as pb;
use serde_json::json;

pub async fn people(client: &mut Client, action: TokenAction) -> Result<i32, CtlError> {
    match action {
        TokenAction::Create { name, role, json } => {
            let req = pb::CreateTokenRequest {
                name,
                role,
                ..Default::default()
            };
            create(client, req, json).await
        }
        TokenAction::List { json } => list(client, "people", json).await,
        TokenAction::Revoke { name } => revoke(client, name, "people").await,
    }
}

pub async fn agents(client: &mut Client, action: AgentTokenAction) -> Result<i32, CtlError> {
    match action {
        AgentTokenAction::Create {
            name,
            labels,
            profile,
            json,
        } => {
            let mut map = std::collections::HashMap::new();
            for l in labels {
                let (k, v) = l.split_once('=').ok_or_else(|| {
                    CtlError::input(format!("--label '{l}' must look like key=value"))
                })?;
                map.insert(k.to_string(), v.to_string());
            }
            let req = pb::CreateTokenRequest {
                name,
                role: "agent".into(),
                labels: map,
                profile: profile.unwrap_or_default(),
            };
            create(client, req, json).await
        }
        AgentTokenAction::List { json } => list(client, "agent", json).await,
        AgentTokenAction::Revoke { name } => revoke(client, name, "agent").await,
    }
}

async fn create(
    client: &mut Client,
    req: pb::CreateTokenRequest,
    json: bool,
) -> Result<i32, CtlError> {
    let made = client.create_token(req).await?.into_inner();
    let t = made.token.unwrap_or_default();
    if json {
        let mut v = token_json(&t);
        v["secret"] = json!(made.secret);
        print_json(&v);
    } else {
        crate::outln!(
            "created {} token '{}'; its secret (shown once, the scheduler keeps only a hash):",
            t.role,
            t.name
        );
        crate::outln!("{}", made.secret);
    }
    Ok(exit::OK)
}

async fn list(client: &mut Client, kind: &str, json: bool) -> Result<i32, CtlError> {
    let tokens = client
        .list_tokens(pb::ListTokensRequest { kind: kind.into() })
        .await?
        .into_inner()
        .tokens;
    if json {
        print_json(&json!(tokens.iter().map(token_json).collect::<Vec<_>>()));
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            let mut labels: Vec<String> =
                t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            vec![
                t.name.clone(),
                t.role.clone(),
                t.profile.clone(),
                labels.join(","),
                t.created_by.clone(),
                render::time_ms(t.created_ms),
            ]
        })
        .collect();
    crate::out!(
        "{}",
        render::table(
            &["NAME", "ROLE", "PROFILE", "LABELS", "CREATED BY", "CREATED"],
            &rows
        )
    );
    Ok(exit::OK)
}

async fn revoke(client: &mut Client, name: String, kind: &str) -> Result<i32, CtlError> {
    let t = client
        .revoke_token(pb::RevokeTokenRequest {
            name,
            kind: kind.into(),
        })
        .await?
        .into_inner();
    crate::outln!("revoked {} token '{}'", t.role, t.name);
    Ok(exit::OK)
}

fn token_json(t: &pb::Token) -> serde_json::Value {
    json!({
        "name": t.name,
        "role": t.role,
        "profile": t.profile,
        "labels": t.labels,
        "created_by": t.created_by,
        "created_ms": t.created_ms,
    })
}
