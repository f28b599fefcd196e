//! Everything the runner needs from one configuration, checked and prepared: the settings, the
//! routing table (for bounces), the resolver, the TLS client configurations and the smart host
//! with its password read from its file.
//!
//! Built once per configuration snapshot (at start and on every reload) and then immutable, so
//! a missing password or CA file is a start-up or reload error with a message for the admin,
//! not a stream of deferrals; the runner takes the current one for each message it delivers.

use std::sync::Arc;

use relayward_protocol::route::Router;
use rustls::ClientConfig;

use crate::client::{Credentials, TlsPolicy};
use crate::config::{ConfigError, DeliveryConfig, SmarthostTls, smarthost_address};
use crate::dane::DaneResolver;
use crate::loops::OwnListeners;
use crate::mta_sts::Fetcher;
use crate::mx::MxResolver;
use crate::tls;

/// One configuration's delivery side. See the module documentation.
pub struct DeliveryContext {
    pub settings: DeliveryConfig,
    /// The same routing table the sessions decide with: bounces are routed by it.
    pub router: Arc<Router>,
    pub(crate) resolver: MxResolver,
    /// TLSA lookups with DNSSEC validation.
    pub(crate) dane: DaneResolver,
    pub(crate) opportunistic: Arc<ClientConfig>,
    /// Verifying configuration for MX hosts under a TLS policy and MTA-STS policy servers:
    /// web PKI roots plus `tls_policy_ca_file`.
    pub(crate) verified: Arc<ClientConfig>,
    /// Where MTA-STS policies come from (resolver, verified HTTPS, port).
    pub(crate) sts_fetcher: Fetcher,
    pub(crate) smarthost: Option<Smarthost>,
    /// Our own listeners: never a next hop (see [`crate::loops`]).
    pub(crate) own: OwnListeners,
}

/// The smart host, ready to use: address, TLS policy, credentials.
pub(crate) struct Smarthost {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: TlsPolicy,
    pub(crate) credentials: Option<Credentials>,
}

impl DeliveryContext {
    /// Checks the settings, reads the smart-host password and CA file, builds the resolver and
    /// the TLS configurations. Fails rather than producing a runner that could not deliver or
    /// would deliver unsafely.
    pub fn new(settings: DeliveryConfig, router: Arc<Router>) -> Result<Self, ConfigError> {
        settings.validate()?;
        let options = crate::mx::options(settings.dns_cache_size, settings.dns_timeout);
        let resolver = MxResolver::new(&settings.nameservers, options)
            .map_err(|e| ConfigError::Resolver(e.to_string()))?;
        let smarthost = smarthost(&settings)?;
        let dane = DaneResolver::new(
            &settings.nameservers,
            settings.dns_cache_size,
            settings.dns_timeout,
            settings.trust_anchor.as_deref(),
        )?;
        let verified = tls::verifying(settings.tls_policy_ca_file.as_deref())?;
        let sts_fetcher = Fetcher {
            resolver: resolver.clone(),
            tls: Arc::clone(&verified),
            port: settings.mta_sts_port,
            timeout: settings.timeouts.connect,
        };
        Ok(Self {
            router,
            resolver,
            dane,
            opportunistic: tls::opportunistic()?,
            verified,
            sts_fetcher,
            smarthost,
            settings,
            own: OwnListeners::default(),
        })
    }

    /// The addresses of this server's listeners, which the runner never connects to.
    pub fn with_own_listeners(mut self, own: OwnListeners) -> Self {
        self.own = own;
        self
    }
}

fn smarthost(config: &DeliveryConfig) -> Result<Option<Smarthost>, ConfigError> {
    let Some(value) = &config.smarthost else {
        return Ok(None);
    };
    let (host, port) = smarthost_address(value)?;
    let credentials = match (&config.smarthost_user, &config.smarthost_password_file) {
        (Some(user), Some(path)) => Some(Credentials {
            user: user.clone(),
            password: read_password(path)?,
        }),
        _ => None,
    };
    let tls = match config.smarthost_tls {
        SmarthostTls::None => TlsPolicy::None,
        SmarthostTls::Starttls => TlsPolicy::Required {
            config: tls::verifying(config.smarthost_ca_file.as_deref())?,
            server_name: host.clone(),
        },
        SmarthostTls::Implicit => TlsPolicy::Implicit {
            config: tls::verifying(config.smarthost_ca_file.as_deref())?,
            server_name: host.clone(),
        },
    };
    Ok(Some(Smarthost {
        host,
        port,
        tls,
        credentials,
    }))
}

fn read_password(path: &std::path::Path) -> Result<String, ConfigError> {
    relayward_config::read_secret_file(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}
