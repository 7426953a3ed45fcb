//! The node's trust layer: its mesh membership and token, the authority role when it holds the
//! authority key, admission of peers (the transport's [`Gatekeeper`]), joins, renewals and
//! revocations. Token checks are the pure ones of `atmosphere-auth`; this module adds state,
//! storage and the mesh.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use atmosphere_auth::invite::secret_hash;
use atmosphere_auth::{
    AuthorityKey, Claims, Invite, MeshId, Revocation, RevocationSet, RevokedTarget, Token,
    TokenError, TokenId, VerifiedToken, unix_now,
};
use atmosphere_mesh::transport::{Gatekeeper, Incoming};
use atmosphere_mesh::{Mesh, MeshError};
use atmosphere_proto::record::{RecordKey, RevocationsKey, TokenKey};
use atmosphere_proto::{ErrorCode, NodeId, Request, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::identity::{self, IdentityError};
use crate::store::{Store, StoreError};

pub const AUTHORITY_KEY_FILE: &str = "authority.key";

/// Why a trust operation failed. Each says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    #[error("this node already belongs to mesh {name:?} ({id})")]
    AlreadyMember { name: String, id: String },
    #[error(
        "this node has not joined a mesh: run `atmosphere mesh init --name NAME` or `atmosphere mesh join INVITE`"
    )]
    NotMember,
    #[error(
        "only the mesh authority can do this; run it on the node where `atmosphere mesh init` ran"
    )]
    NotAuthority,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("invalid invite or token: {0}")]
    BadInvite(String),
    #[error("the token is for node {bound}, this node is {this}")]
    NotForThisNode { bound: String, this: String },
    #[error("the authority refused: {0}")]
    Refused(String),
    #[error("cannot reach the authority: {0}")]
    Unreachable(#[from] MeshError),
    #[error("{0}")]
    BadTarget(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What `atmosphere auth verify` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthStatus {
    pub member: bool,
    pub mesh_id: Option<String>,
    pub mesh_name: Option<String>,
    pub node: NodeId,
    pub authority: bool,
    /// "valid", "expired", "revoked", "none" or the verification error.
    pub token_status: String,
    pub token_id: Option<String>,
    pub name: Option<String>,
    pub capabilities: Vec<String>,
    pub issued_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub expires_in_secs: Option<u64>,
    /// Always true: verification is a signature check against the mesh key held locally.
    pub verified_offline: bool,
    pub verify_micros: u64,
    pub revocations: usize,
    pub admitted_peers: usize,
}

#[derive(Debug, Clone, Copy)]
struct PeerToken {
    token_id: TokenId,
    expires_at: u64,
    authority: bool,
}

#[derive(Debug, Default)]
struct State {
    mesh: Option<(MeshId, String)>,
    token: Option<VerifiedToken>,
    /// When this node received `token`, by its own clock (unknown for a token loaded at start).
    token_received: Option<u64>,
    authority: Option<AuthorityKey>,
    revocations: RevocationSet,
    peers: HashMap<NodeId, PeerToken>,
    /// Peers dropped because their token expired: a later valid handshake lets them back.
    expired: HashSet<NodeId>,
}

/// Shared trust state; the transport holds it as its gatekeeper.
#[derive(Debug)]
pub struct Trust {
    self_id: NodeId,
    state: RwLock<State>,
    readmitted_tx: mpsc::UnboundedSender<NodeId>,
}

impl Gatekeeper for Trust {
    fn credential(&self) -> Option<Vec<u8>> {
        self.read().token.as_ref().map(|t| t.token.to_bytes())
    }

    fn admit(&self, peer: NodeId, credential: &[u8]) -> Result<(), String> {
        let result = self.check_peer_token(peer, credential, unix_now());
        match &result {
            Ok(()) => {
                if self.write().expired.remove(&peer) {
                    let _ = self.readmitted_tx.send(peer);
                }
            }
            Err(reason) => warn!(peer = %peer.short(), "admission refused: {reason}"),
        }
        result
    }
}

impl Trust {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Verifies a peer's token (binary form) and remembers it.
    fn check_peer_token(&self, peer: NodeId, bytes: &[u8], now: u64) -> Result<(), String> {
        let mut state = self.write();
        let Some(mesh) = state.mesh.as_ref().map(|(id, _)| *id) else {
            return Err("this node has not joined a mesh yet".into());
        };
        let token = Token::from_bytes(bytes).map_err(|e| e.to_string())?;
        let verified = token
            .verify(&mesh, &peer, now, &state.revocations)
            .map_err(|e| e.to_string())?;
        state.peers.insert(
            peer,
            PeerToken {
                token_id: verified.claims.token_id,
                expires_at: verified.claims.expires_at,
                authority: verified.claims.authority,
            },
        );
        Ok(())
    }

    pub fn mesh_id(&self) -> Option<MeshId> {
        self.read().mesh.as_ref().map(|(id, _)| *id)
    }

    /// Whether this node holds the mesh authority key.
    pub fn is_authority(&self) -> bool {
        self.read().authority.is_some()
    }

    /// Signs a shared config as the authority; `None` on any other node.
    pub fn sign_config(
        &self,
        project: &str,
        version: u64,
        text: &str,
    ) -> Option<Result<atmosphere_auth::SignedConfig, atmosphere_auth::ConfigError>> {
        let state = self.read();
        let authority = state.authority.as_ref()?;
        Some(atmosphere_auth::ConfigDoc::sign(
            authority,
            project,
            version,
            text,
            unix_now(),
        ))
    }

    /// This node's current token.
    pub fn credential_token(&self) -> Option<Token> {
        self.read().token.as_ref().map(|t| t.token.clone())
    }

    /// Checks a package seal offline against this mesh's authority and the revocations known
    /// here; returns the packing node's claims.
    pub fn check_seal(
        &self,
        seal: &atmosphere_auth::Seal,
        manifest: &[u8],
    ) -> Result<atmosphere_auth::Claims, String> {
        let state = self.read();
        let Some((mesh, _)) = state.mesh.as_ref() else {
            return Err(
                "this node has not joined a mesh, so it cannot check who packed the package: join first (`atmosphere mesh join`)".into(),
            );
        };
        seal.verify(manifest, mesh, &state.revocations)
            .map_err(|e| e.to_string())
    }

    /// Admitted peers whose token says they are the authority.
    pub fn authority_peers(&self) -> Vec<NodeId> {
        let now = unix_now();
        self.read()
            .peers
            .iter()
            .filter(|(_, p)| p.authority && p.expires_at > now)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The trust layer's operations, wired to storage and the mesh.
#[derive(Debug, Clone)]
pub struct TrustService {
    trust: Arc<Trust>,
    store: Arc<Store>,
    data_dir: PathBuf,
    mesh: Mesh,
    /// Lifetime of the tokens this node issues when it is the authority.
    token_ttl: Duration,
}

impl TrustService {
    /// Loads membership, token, revocations and the authority key (if any) from disk.
    pub fn load(
        self_id: NodeId,
        store: Arc<Store>,
        data_dir: PathBuf,
        token_ttl: Duration,
    ) -> Result<(Arc<Trust>, mpsc::UnboundedReceiver<NodeId>, LoadedTrust), TrustError> {
        let mut state = State::default();
        if let (Some(id), Some(name)) = (store.auth_get("mesh_id")?, store.auth_get("mesh_name")?) {
            let id: [u8; 32] = id
                .try_into()
                .map_err(|_| TrustError::BadInvite("stored mesh id is corrupt".into()))?;
            state.mesh = Some((MeshId(id), String::from_utf8_lossy(&name).into_owned()));
        }
        if let Some(mesh) = state.mesh.as_ref().map(|(id, _)| *id) {
            if let Some(bytes) = store.auth_get("revocations")? {
                let _ = state.revocations.merge_bytes(&mesh, &bytes);
            }
            if let Some(bytes) = store.auth_get("token")? {
                // An expired token is kept out of `token`; renewal needs the authority anyway.
                match Token::from_bytes(&bytes)
                    .and_then(|t| t.verify(&mesh, &self_id, unix_now(), &state.revocations))
                {
                    Ok(verified) => state.token = Some(verified),
                    Err(e) => warn!("stored token unusable: {e}"),
                }
            }
            if let Some(bytes) = identity::load_key(&data_dir, AUTHORITY_KEY_FILE)? {
                let key = AuthorityKey::from_bytes(&bytes);
                if key.mesh_id() == mesh {
                    state.authority = Some(key);
                }
            }
        }
        let (readmitted_tx, readmitted_rx) = mpsc::unbounded_channel();
        let trust = Arc::new(Trust {
            self_id,
            state: RwLock::new(state),
            readmitted_tx,
        });
        Ok((
            trust,
            readmitted_rx,
            LoadedTrust {
                store,
                data_dir,
                token_ttl,
            },
        ))
    }

    pub fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    fn self_id(&self) -> NodeId {
        self.trust.self_id
    }

    /// Publishes our token and revocations in gossip.
    async fn publish(&self, push: bool) {
        let (token, revocations) = {
            let state = self.trust.read();
            (
                state.token.as_ref().map(|t| t.token.to_bytes()),
                state.revocations.to_bytes(),
            )
        };
        if let Some(token) = token {
            let _ = self.mesh.set_value(TokenKey::KEY, token, false).await;
        }
        let _ = self
            .mesh
            .set_value(RevocationsKey::KEY, revocations, push)
            .await;
    }

    fn persist(&self) -> Result<(), TrustError> {
        let state = self.trust.read();
        let Some((mesh, name)) = &state.mesh else {
            return Ok(());
        };
        let token = state
            .token
            .as_ref()
            .map(|t| t.token.to_bytes())
            .unwrap_or_default();
        let revocations = state.revocations.to_bytes();
        self.store.auth_put(&[
            ("mesh_id", &mesh.0),
            ("mesh_name", name.as_bytes()),
            ("token", &token),
            ("revocations", &revocations),
        ])?;
        Ok(())
    }

    fn claims_for(
        &self,
        mesh: MeshId,
        node: NodeId,
        name: &str,
        capabilities: Vec<String>,
        authority: bool,
        ttl: Duration,
    ) -> Claims {
        let now = unix_now();
        Claims {
            mesh,
            token_id: TokenId::random(),
            node,
            name: name.to_owned(),
            capabilities,
            authority,
            issued_at: now,
            not_before: now,
            expires_at: now.saturating_add(ttl.as_secs().max(1)),
        }
    }

    /// `mesh init`: makes this node the authority and first member of a new mesh.
    pub async fn init(&self, name: &str, node_name: &str) -> Result<AuthStatus, TrustError> {
        {
            let state = self.trust.read();
            if let Some((id, existing)) = &state.mesh {
                return Err(TrustError::AlreadyMember {
                    name: existing.clone(),
                    id: id.fingerprint(),
                });
            }
        }
        let authority = AuthorityKey::generate();
        identity::store_key(&self.data_dir, AUTHORITY_KEY_FILE, &authority.to_bytes())?;
        let mesh = authority.mesh_id();
        let claims = self.claims_for(
            mesh,
            self.self_id(),
            node_name,
            Vec::new(),
            true,
            self.token_ttl,
        );
        let token = Token::issue(&authority, &claims);
        let verified = token.verify_signature(&mesh, unix_now())?;
        {
            let mut state = self.trust.write();
            state.mesh = Some((mesh, name.to_owned()));
            state.token = Some(verified);
            state.token_received = Some(unix_now());
            state.authority = Some(authority);
        }
        self.persist()?;
        self.publish(false).await;
        info!(mesh = %mesh.fingerprint(), "created mesh {name:?}; this node is its authority");
        Ok(self.status())
    }

    /// `mesh invite`: a one-time invite string.
    pub async fn invite(&self, ttl: Duration) -> Result<String, TrustError> {
        let (mesh, mesh_name) = {
            let state = self.trust.read();
            if state.authority.is_none() {
                return Err(TrustError::NotAuthority);
            }
            state.mesh.clone().ok_or(TrustError::NotMember)?
        };
        let secret: [u8; 16] = rand::random();
        let expires_at = unix_now().saturating_add(ttl.as_secs().max(1));
        self.store.add_invite(&secret_hash(&secret), expires_at)?;
        let addrs = self
            .mesh
            .status()
            .await?
            .nodes
            .into_iter()
            .find(|n| n.is_self)
            .map(|n| n.addrs)
            .unwrap_or_default();
        Ok(Invite {
            mesh,
            mesh_name,
            authority_node: self.self_id(),
            addrs,
            secret,
            expires_at,
        }
        .encode())
    }

    /// `token issue`: a token for another node's key, signed here.
    pub fn issue(
        &self,
        node: NodeId,
        name: &str,
        ttl: Duration,
        capabilities: Vec<String>,
    ) -> Result<String, TrustError> {
        let state = self.trust.read();
        let authority = state.authority.as_ref().ok_or(TrustError::NotAuthority)?;
        let claims = self.claims_for(authority.mesh_id(), node, name, capabilities, false, ttl);
        Ok(Token::issue(authority, &claims).encode())
    }

    /// `mesh join`: with an invite (asks the authority over the mesh) or a token (offline).
    pub async fn join(&self, text: &str, node_name: &str) -> Result<AuthStatus, TrustError> {
        if let Some((id, existing)) = &self.trust.read().mesh {
            return Err(TrustError::AlreadyMember {
                name: existing.clone(),
                id: id.fingerprint(),
            });
        }
        let (token, mesh_name) = if Invite::is_invite(text) {
            let invite = Invite::decode(text).map_err(|e| TrustError::BadInvite(e.to_string()))?;
            self.mesh
                .add_peer(atmosphere_mesh::PeerAddr {
                    id: invite.authority_node,
                    addrs: invite.addrs.clone(),
                })
                .await?;
            let join = Request::Join {
                secret: invite.secret.to_vec(),
                name: node_name.to_owned(),
            };
            // A connection that dies under the request (seen on a loaded machine) is dialled
            // afresh once. Had the authority already used the invite, the retry is told so.
            let response = match self.mesh.call(invite.authority_node, join.clone()).await {
                Err(atmosphere_mesh::MeshError::Transport(
                    atmosphere_mesh::transport::TransportError::ConnectionLost { .. },
                )) => self.mesh.call(invite.authority_node, join).await?,
                other => other?,
            };
            let token = match response {
                Response::Token { token } => Token::from_bytes(&token)?,
                Response::Error { message, .. } => return Err(TrustError::Refused(message)),
                other => return Err(TrustError::Refused(format!("unexpected answer {other:?}"))),
            };
            if token.claims_unverified()?.mesh != invite.mesh {
                return Err(TrustError::Refused(
                    "the authority answered with another mesh's token".into(),
                ));
            }
            (token, invite.mesh_name)
        } else {
            let token = Token::decode(text)?;
            let name = format!("mesh-{}", token.claims_unverified()?.mesh.fingerprint());
            (token, name)
        };
        let claims = token.claims_unverified()?;
        if claims.node != self.self_id() {
            return Err(TrustError::NotForThisNode {
                bound: claims.node.short(),
                this: self.self_id().short(),
            });
        }
        let verified = token.verify(
            &claims.mesh,
            &self.self_id(),
            unix_now(),
            &RevocationSet::default(),
        )?;
        {
            let mut state = self.trust.write();
            state.mesh = Some((claims.mesh, mesh_name.clone()));
            state.token = Some(verified);
            state.token_received = Some(unix_now());
        }
        self.persist()?;
        self.publish(false).await;
        info!(mesh = %claims.mesh.fingerprint(), "joined mesh {mesh_name:?}");
        Ok(self.status())
    }

    /// `token revoke`: by token id (32 hex digits) or node name / id.
    pub async fn revoke(&self, target: &str, reason: &str) -> Result<RevokedTarget, TrustError> {
        let target = match target.parse::<TokenId>() {
            Ok(id) if target.trim().len() == 32 => RevokedTarget::Token(id),
            _ => RevokedTarget::Node(
                self.mesh
                    .resolve(target)
                    .await
                    .map_err(|e| TrustError::BadTarget(e.to_string()))?,
            ),
        };
        if target == RevokedTarget::Node(self.self_id()) {
            return Err(TrustError::BadTarget(
                "the authority cannot revoke itself".into(),
            ));
        }
        let added = {
            let mut state = self.trust.write();
            let authority = state.authority.as_ref().ok_or(TrustError::NotAuthority)?;
            let mesh = authority.mesh_id();
            let signed = Revocation::sign(authority, target, unix_now(), reason);
            state
                .revocations
                .insert(&mesh, signed)
                .map_err(|e| TrustError::BadTarget(e.to_string()))?
        };
        self.persist()?;
        self.publish(true).await;
        if let Some(target) = added {
            self.enforce(&[target]).await;
        }
        Ok(target)
    }

    /// Disconnects and bans whoever `targets` name.
    async fn enforce(&self, targets: &[RevokedTarget]) {
        let victims: Vec<NodeId> = {
            let state = self.trust.read();
            targets
                .iter()
                .flat_map(|target| match target {
                    RevokedTarget::Node(id) => vec![*id],
                    RevokedTarget::Token(token_id) => state
                        .peers
                        .iter()
                        .filter(|(_, p)| p.token_id == *token_id)
                        .map(|(id, _)| *id)
                        .collect(),
                })
                .collect()
        };
        for victim in victims {
            self.trust.write().peers.remove(&victim);
            let _ = self.mesh.ban(victim, "revoked").await;
        }
    }

    /// What `auth verify` prints: our token checked offline, now.
    pub fn status(&self) -> AuthStatus {
        let state = self.trust.read();
        let now = unix_now();
        let started = std::time::Instant::now();
        let (token_status, claims) = match (&state.mesh, &state.token) {
            (Some((mesh, _)), Some(token)) => {
                match token
                    .token
                    .verify(mesh, &self.self_id(), now, &state.revocations)
                {
                    Ok(verified) => ("valid".to_owned(), Some(verified.claims)),
                    Err(TokenError::Expired { .. }) => {
                        ("expired".into(), Some(token.claims.clone()))
                    }
                    Err(TokenError::Revoked(_) | TokenError::NodeRevoked(_)) => {
                        ("revoked".into(), Some(token.claims.clone()))
                    }
                    Err(e) => (e.to_string(), Some(token.claims.clone())),
                }
            }
            (Some(_), None) => ("expired".into(), None),
            _ => ("none".into(), None),
        };
        let verify_micros = started.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
        AuthStatus {
            member: state.mesh.is_some(),
            mesh_id: state.mesh.as_ref().map(|(id, _)| id.to_string()),
            mesh_name: state.mesh.as_ref().map(|(_, name)| name.clone()),
            node: self.self_id(),
            authority: state.authority.is_some(),
            token_status,
            token_id: claims.as_ref().map(|c| c.token_id.to_string()),
            name: claims.as_ref().map(|c| c.name.clone()),
            capabilities: claims
                .as_ref()
                .map(|c| c.capabilities.clone())
                .unwrap_or_default(),
            issued_at: claims.as_ref().map(|c| c.issued_at),
            expires_at: claims.as_ref().map(|c| c.expires_at),
            expires_in_secs: claims.as_ref().map(|c| c.expires_at.saturating_sub(now)),
            verified_offline: true,
            verify_micros,
            revocations: state.revocations.len(),
            admitted_peers: state.peers.len(),
        }
    }

    /// Answers `Join` and `Renew` (the authority's side).
    fn answer(&self, from: NodeId, request: Request) -> Response {
        let refuse = |code, message: String| Response::Error { code, message };
        let state = self.trust.read();
        let Some(authority) = state.authority.as_ref() else {
            return refuse(
                ErrorCode::Unauthorized,
                "this node is not the mesh authority".into(),
            );
        };
        let mesh = authority.mesh_id();
        match request {
            Request::Join { secret, name } => {
                if state.revocations.is_node_revoked(&from) {
                    return refuse(ErrorCode::Unauthorized, "this node has been revoked".into());
                }
                match self.store.take_invite(&secret_hash(&secret), unix_now()) {
                    Ok(true) => {}
                    Ok(false) => {
                        warn!(peer = %from.short(), "join refused: unknown, used or expired invite");
                        return refuse(
                            ErrorCode::Unauthorized,
                            "invite is unknown, already used or expired".into(),
                        );
                    }
                    Err(e) => return refuse(ErrorCode::Internal, e.to_string()),
                }
                let name: String = name.chars().take(64).collect();
                let claims = self.claims_for(mesh, from, &name, Vec::new(), false, self.token_ttl);
                info!(peer = %from.short(), "admitted {name:?} by invite");
                Response::Token {
                    token: Token::issue(authority, &claims).to_bytes(),
                }
            }
            Request::Renew { token } => {
                let verified = match Token::from_bytes(&token)
                    .and_then(|t| t.verify(&mesh, &from, unix_now(), &state.revocations))
                {
                    Ok(verified) => verified,
                    Err(e) => return refuse(ErrorCode::Unauthorized, format!("cannot renew: {e}")),
                };
                let old = verified.claims;
                let lifetime =
                    Duration::from_secs(old.expires_at.saturating_sub(old.issued_at).max(1));
                let claims = self.claims_for(
                    mesh,
                    from,
                    &old.name,
                    old.capabilities,
                    old.authority,
                    lifetime,
                );
                Response::Token {
                    token: Token::issue(authority, &claims).to_bytes(),
                }
            }
            _ => refuse(ErrorCode::BadRequest, "not a trust request".into()),
        }
    }

    /// Renews our token when 2/3 of its life has passed: ourselves when we are the authority,
    /// else from an authority we can reach.
    async fn renew_if_due(&self) {
        let now = unix_now();
        let (due, current, authority_peers) = {
            let state = self.trust.read();
            let Some(token) = &state.token else { return };
            let peers: Vec<NodeId> = state
                .peers
                .iter()
                .filter(|(_, p)| p.authority && p.expires_at > now)
                .map(|(id, _)| *id)
                .collect();
            // By the authority's clock or, when later, by ours since we received it.
            let due = match state.token_received {
                Some(received) => token.should_renew_since(received, now),
                None => token.should_renew(now),
            };
            (due, token.clone(), peers)
        };
        if !due {
            return;
        }
        let renewed = if self.trust.read().authority.is_some() {
            match self.answer(
                self.self_id(),
                Request::Renew {
                    token: current.token.to_bytes(),
                },
            ) {
                Response::Token { token } => Some(token),
                _ => None,
            }
        } else {
            let mut renewed = None;
            for authority in authority_peers {
                match self
                    .mesh
                    .call(
                        authority,
                        Request::Renew {
                            token: current.token.to_bytes(),
                        },
                    )
                    .await
                {
                    Ok(Response::Token { token }) => {
                        renewed = Some(token);
                        break;
                    }
                    Ok(other) => warn!("renewal refused by {}: {other:?}", authority.short()),
                    Err(e) => warn!("renewal failed: {e}"),
                }
            }
            renewed
        };
        let Some(bytes) = renewed else { return };
        let Some(mesh) = self.trust.mesh_id() else {
            return;
        };
        let verified =
            match Token::from_bytes(&bytes).and_then(|t| t.verify_signature(&mesh, unix_now())) {
                Ok(verified) if verified.claims.node == self.self_id() => verified,
                Ok(_) => return warn!("renewed token is for another node; ignored"),
                Err(e) => return warn!("renewed token invalid: {e}"),
            };
        info!(
            token = %verified.claims.token_id,
            expires_in = verified.claims.expires_at.saturating_sub(unix_now()),
            "token renewed"
        );
        {
            let mut state = self.trust.write();
            state.token = Some(verified);
            state.token_received = Some(unix_now());
        }
        if let Err(e) = self.persist() {
            warn!("could not store the renewed token: {e}");
        }
        self.publish(false).await;
    }

    /// Drops peers whose token has expired.
    async fn sweep_expired(&self) {
        let now = unix_now();
        let expired: Vec<NodeId> = {
            let mut state = self.trust.write();
            let expired: Vec<NodeId> = state
                .peers
                .iter()
                .filter(|(_, p)| p.expires_at <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in &expired {
                state.peers.remove(id);
                state.expired.insert(*id);
            }
            expired
        };
        for id in expired {
            let _ = self.mesh.ban(id, "token expired").await;
        }
    }

    /// A peer's gossiped value changed: tokens are checked, revocations merged and enforced.
    async fn on_change(&self, change: atmosphere_mesh::ValueChanged) {
        let Some(mesh) = self.trust.mesh_id() else {
            return;
        };
        match change.key.as_str() {
            RevocationsKey::KEY => {
                let added = self
                    .trust
                    .write()
                    .revocations
                    .merge_bytes(&mesh, &change.value);
                match added {
                    Ok(added) if !added.is_empty() => {
                        info!(
                            count = added.len(),
                            "learned revocations from {}",
                            change.node.short()
                        );
                        if let Err(e) = self.persist() {
                            warn!("could not store revocations: {e}");
                        }
                        self.publish(true).await;
                        self.enforce(&added).await;
                    }
                    Ok(_) => {}
                    Err(e) => warn!(peer = %change.node.short(), "bad revocation list: {e}"),
                }
            }
            TokenKey::KEY => {
                if let Err(reason) =
                    self.trust
                        .check_peer_token(change.node, &change.value, unix_now())
                {
                    self.trust.write().peers.remove(&change.node);
                    let _ = self.mesh.ban(change.node, &reason).await;
                }
            }
            _ => {}
        }
    }
}

/// What [`TrustService::load`] hands back until the mesh exists.
#[derive(Debug)]
pub struct LoadedTrust {
    store: Arc<Store>,
    data_dir: PathBuf,
    token_ttl: Duration,
}

impl LoadedTrust {
    pub fn into_service(self, trust: Arc<Trust>, mesh: Mesh) -> TrustService {
        TrustService {
            trust,
            store: self.store,
            data_dir: self.data_dir,
            mesh,
            token_ttl: self.token_ttl,
        }
    }
}

/// Runs the trust layer: answers joins and renewals, merges revocations, checks peers' tokens,
/// renews our own, drops expired peers.
pub async fn run(
    service: TrustService,
    mut app_rx: mpsc::Receiver<Incoming>,
    mut readmitted_rx: mpsc::UnboundedReceiver<NodeId>,
    cancel: tokio_util::sync::CancellationToken,
) {
    service.publish(false).await;
    let mut changes = service.mesh.subscribe();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(incoming) = app_rx.recv() => {
                let response = service.answer(incoming.from, incoming.request);
                let _ = incoming.reply_tx.send(response);
            }
            change = changes.recv() => match change {
                Ok(change) => service.on_change(change).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => warn!("trust layer lagged {n} changes"),
                Err(_) => break,
            },
            Some(peer) = readmitted_rx.recv() => {
                let _ = service.mesh.unban(peer).await;
            }
            _ = ticker.tick() => {
                service.renew_if_due().await;
                service.sweep_expired().await;
            }
        }
    }
}
