//! A blocking Go `net/rpc` client over gob, and the `CliRpcCmd` calls a cf plugin makes.
//!
//! net/rpc frames nothing itself: a call is the gob value `Request{ServiceMethod, Seq}` followed
//! by the argument on the client's gob stream; the answer is `Response{ServiceMethod, Seq,
//! Error}` followed by the reply on the server's stream. When `Error` is set the reply is an
//! empty struct and the connection stays usable. Both streams live as long as the TCP
//! connection, so a [`Client`] keeps one [`Encoder`] and one [`Decoder`]: each type definition
//! crosses the connection once.
//!
//! The method names and argument/reply types are the cf CLI's (`CliRpcCmd.*`); most take an
//! unused string argument. The cf CLI listens on 127.0.0.1 only, on the port it passes to the
//! plugin as its first argument. Imports `gob` only.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use secrecy::SecretString;

use crate::gob::{field, Decoder, Encoder, FromGob, GobError, ToGob, Type, Value};

/// Bounds connecting, and each read and write: a cf CLI that stops answering must not hang
/// the plugin forever. Core commands (`CallCoreCommand`) can take a while, hence a minute.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach the cf CLI on 127.0.0.1:{port} (is this plugin being run by cf?)")]
    Connect { port: u16, source: std::io::Error },
    #[error("{method}: talking to the cf CLI failed")]
    Transport { method: String, source: GobError },
    #[error("{method}: the cf CLI answered: {message}")]
    Server { method: String, message: String },
    #[error("{method}: unexpected answer from the cf CLI: {detail}")]
    Protocol { method: String, detail: String },
}

fn request_type() -> Type {
    Type::structure(
        "Request",
        vec![("ServiceMethod", Type::String), ("Seq", Type::Uint)],
    )
}

/// The type net/rpc's server announces for its response header; here for tests and servers.
pub fn response_type() -> Type {
    Type::structure(
        "Response",
        vec![
            ("ServiceMethod", Type::String),
            ("Seq", Type::Uint),
            ("Error", Type::String),
        ],
    )
}

/// One connection to the cf CLI's RPC server.
pub struct Client {
    stream: TcpStream,
    encoder: Encoder,
    decoder: Decoder<BufReader<TcpStream>>,
    seq: u64,
}

impl Client {
    /// Connects to the cf CLI at 127.0.0.1:`port` with [`DEFAULT_TIMEOUT`].
    pub fn connect(port: u16) -> Result<Client, RpcError> {
        Self::connect_timeout(port, DEFAULT_TIMEOUT)
    }

    pub fn connect_timeout(port: u16, timeout: Duration) -> Result<Client, RpcError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let connect = || -> std::io::Result<(TcpStream, TcpStream)> {
            let stream = TcpStream::connect_timeout(&addr, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            stream.set_nodelay(true)?;
            let reader = stream.try_clone()?;
            Ok((stream, reader))
        };
        let (stream, reader) = connect().map_err(|source| RpcError::Connect { port, source })?;
        Ok(Client {
            stream,
            encoder: Encoder::new(),
            decoder: Decoder::new(BufReader::new(reader)),
            seq: 0,
        })
    }

    /// Calls `method` with a dynamically typed argument and returns the reply as decoded.
    /// After a [`RpcError::Transport`] error (e.g. a timeout mid-message) the connection is
    /// out of step: drop the client. After [`RpcError::Server`] it is fine to go on.
    pub fn call_value(
        &mut self,
        method: &str,
        arg_type: &Type,
        arg: &Value,
    ) -> Result<Value, RpcError> {
        let transport = |source| RpcError::Transport {
            method: method.to_string(),
            source,
        };
        let seq = self.seq;
        self.seq += 1;
        let header = Value::Struct(vec![
            ("ServiceMethod".into(), Value::String(method.into())),
            ("Seq".into(), Value::Uint(seq)),
        ]);
        // Header and argument go out in one write, as Go's client flushes them together.
        let mut out = Vec::new();
        self.encoder
            .encode(&mut out, &request_type(), &header)
            .map_err(transport)?;
        self.encoder
            .encode(&mut out, arg_type, arg)
            .map_err(transport)?;
        self.stream
            .write_all(&out)
            .map_err(|e| transport(e.into()))?;

        let response = self.decoder.decode().map_err(transport)?;
        let body = self.decoder.decode().map_err(transport)?;
        let protocol = |detail: String| RpcError::Protocol {
            method: method.to_string(),
            detail,
        };
        let got_seq: u64 = field(&response, "Seq").map_err(|e| protocol(e.to_string()))?;
        if got_seq != seq {
            return Err(protocol(format!(
                "response to call {got_seq}, expected {seq}"
            )));
        }
        let message: String = field(&response, "Error").map_err(|e| protocol(e.to_string()))?;
        if !message.is_empty() {
            return Err(RpcError::Server {
                method: method.to_string(),
                message,
            });
        }
        Ok(body)
    }

    /// Calls `method` with a typed argument and converts the reply.
    pub fn call<A: ToGob + ?Sized, R: FromGob>(
        &mut self,
        method: &str,
        arg: &A,
    ) -> Result<R, RpcError> {
        let reply = self.call_value(method, &A::gob_type(), &arg.to_gob())?;
        R::from_gob(&reply).map_err(|e| RpcError::Protocol {
            method: method.to_string(),
            detail: e.to_string(),
        })
    }

    /// Registers the plugin's name, version and commands (`<plugin> <port> SendMetadata`).
    pub fn set_plugin_metadata(&mut self, metadata: &PluginMetadata) -> Result<bool, RpcError> {
        self.call("CliRpcCmd.SetPluginMetadata", metadata)
    }
    pub fn is_min_cli_version(&mut self, version: &str) -> Result<bool, RpcError> {
        self.call("CliRpcCmd.IsMinCliVersion", version)
    }
    /// The user's UAA token as cf holds it, `bearer <jwt>`. cf answers with an error (e.g.
    /// "not logged in") rather than an empty token when there is none.
    pub fn access_token(&mut self) -> Result<SecretString, RpcError> {
        let token: String = self.call("CliRpcCmd.AccessToken", "")?;
        Ok(SecretString::from(token))
    }
    pub fn api_endpoint(&mut self) -> Result<String, RpcError> {
        self.call("CliRpcCmd.ApiEndpoint", "")
    }
    pub fn is_ssl_disabled(&mut self) -> Result<bool, RpcError> {
        self.call("CliRpcCmd.IsSSLDisabled", "")
    }
    pub fn is_logged_in(&mut self) -> Result<bool, RpcError> {
        self.call("CliRpcCmd.IsLoggedIn", "")
    }
    pub fn has_space(&mut self) -> Result<bool, RpcError> {
        self.call("CliRpcCmd.HasSpace", "")
    }
    pub fn username(&mut self) -> Result<String, RpcError> {
        self.call("CliRpcCmd.Username", "")
    }
    pub fn user_guid(&mut self) -> Result<String, RpcError> {
        self.call("CliRpcCmd.UserGuid", "")
    }
    pub fn get_current_space(&mut self) -> Result<Space, RpcError> {
        self.call("CliRpcCmd.GetCurrentSpace", "")
    }
    pub fn get_current_org(&mut self) -> Result<Organization, RpcError> {
        self.call("CliRpcCmd.GetCurrentOrg", "")
    }
    pub fn disable_terminal_output(&mut self, disable: bool) -> Result<bool, RpcError> {
        self.call("CliRpcCmd.DisableTerminalOutput", &disable)
    }
    pub fn call_core_command(&mut self, args: &[String]) -> Result<bool, RpcError> {
        self.call("CliRpcCmd.CallCoreCommand", args)
    }
    /// The argument is the success flag of the preceding `CallCoreCommand`, as cf's Go shim
    /// passes it; the server ignores it.
    pub fn get_output_and_reset(&mut self, success: bool) -> Result<Vec<String>, RpcError> {
        self.call("CliRpcCmd.GetOutputAndReset", &success)
    }

    /// Runs a cf command (`["curl", "/v3/spaces"]`) and returns its output lines, the three
    /// calls cf's Go plugin shim makes for `CliCommandWithoutTerminalOutput`.
    pub fn cli_command_without_terminal_output(
        &mut self,
        args: &[String],
    ) -> Result<Vec<String>, RpcError> {
        self.disable_terminal_output(true)?;
        let success = self.call_core_command(args)?;
        let output = self.get_output_and_reset(success)?;
        if !success {
            return Err(RpcError::Server {
                method: "CliRpcCmd.CallCoreCommand".into(),
                message: format!("`cf {}` failed: {}", args.join(" "), output.join("\n")),
            });
        }
        Ok(output)
    }
}

// ---- cf's plugin types (field names are the wire contract; Go type names are cosmetic) ----

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionType {
    pub major: i64,
    pub minor: i64,
    pub build: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub usage: String,
    /// Option (`--json`) to its help text.
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub alias: String,
    pub help_text: String,
    pub usage_details: Usage,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginMetadata {
    pub name: String,
    pub version: VersionType,
    pub library_version: VersionType,
    pub min_cli_version: VersionType,
    pub commands: Vec<Command>,
}

/// `plugin_models.Space`: Go embeds `SpaceFields`, so the wire has a nested struct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Space {
    pub guid: String,
    pub name: String,
}

/// `plugin_models.Organization`, without the quota (its fields are skipped on decode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Organization {
    pub guid: String,
    pub name: String,
}

fn strukt(fields: Vec<(&str, Value)>) -> Value {
    Value::Struct(
        fields
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
    )
}

impl ToGob for VersionType {
    fn gob_type() -> Type {
        let int = || Type::Int;
        Type::structure(
            "VersionType",
            vec![("Major", int()), ("Minor", int()), ("Build", int())],
        )
    }
    fn to_gob(&self) -> Value {
        let (major, minor, build) = (self.major, self.minor, self.build);
        strukt(vec![
            ("Major", Value::Int(major)),
            ("Minor", Value::Int(minor)),
            ("Build", Value::Int(build)),
        ])
    }
}
impl FromGob for VersionType {
    fn from_gob(v: &Value) -> Result<Self, GobError> {
        Ok(VersionType {
            major: field(v, "Major")?,
            minor: field(v, "Minor")?,
            build: field(v, "Build")?,
        })
    }
}

impl ToGob for Usage {
    fn gob_type() -> Type {
        let options = Type::map("map[string]string", Type::String, Type::String);
        Type::structure("Usage", vec![("Usage", Type::String), ("Options", options)])
    }
    fn to_gob(&self) -> Value {
        strukt(vec![
            ("Usage", self.usage.to_gob()),
            ("Options", self.options.to_gob()),
        ])
    }
}
impl FromGob for Usage {
    fn from_gob(v: &Value) -> Result<Self, GobError> {
        Ok(Usage {
            usage: field(v, "Usage")?,
            options: field(v, "Options")?,
        })
    }
}

impl ToGob for Command {
    fn gob_type() -> Type {
        Type::structure(
            "Command",
            vec![
                ("Name", Type::String),
                ("Alias", Type::String),
                ("HelpText", Type::String),
                ("UsageDetails", Usage::gob_type()),
            ],
        )
    }
    fn to_gob(&self) -> Value {
        strukt(vec![
            ("Name", self.name.to_gob()),
            ("Alias", self.alias.to_gob()),
            ("HelpText", self.help_text.to_gob()),
            ("UsageDetails", self.usage_details.to_gob()),
        ])
    }
}
impl FromGob for Command {
    fn from_gob(v: &Value) -> Result<Self, GobError> {
        Ok(Command {
            name: field(v, "Name")?,
            alias: field(v, "Alias")?,
            help_text: field(v, "HelpText")?,
            usage_details: field(v, "UsageDetails")?,
        })
    }
}

impl ToGob for PluginMetadata {
    /// Named as the harness's Go types are, so our bytes match its capture exactly.
    fn gob_type() -> Type {
        Type::structure(
            "PluginMetadata",
            vec![
                ("Name", Type::String),
                ("Version", VersionType::gob_type()),
                ("LibraryVersion", VersionType::gob_type()),
                ("MinCliVersion", VersionType::gob_type()),
                (
                    "Commands",
                    Type::slice("[]main.Command", Command::gob_type()),
                ),
            ],
        )
    }
    fn to_gob(&self) -> Value {
        strukt(vec![
            ("Name", self.name.to_gob()),
            ("Version", self.version.to_gob()),
            ("LibraryVersion", self.library_version.to_gob()),
            ("MinCliVersion", self.min_cli_version.to_gob()),
            ("Commands", self.commands.to_gob()),
        ])
    }
}
impl FromGob for PluginMetadata {
    fn from_gob(v: &Value) -> Result<Self, GobError> {
        Ok(PluginMetadata {
            name: field(v, "Name")?,
            version: field(v, "Version")?,
            library_version: field(v, "LibraryVersion")?,
            min_cli_version: field(v, "MinCliVersion")?,
            commands: field(v, "Commands")?,
        })
    }
}

impl ToGob for Space {
    fn gob_type() -> Type {
        let fields = Type::structure(
            "SpaceFields",
            vec![("Guid", Type::String), ("Name", Type::String)],
        );
        Type::structure("Space", vec![("SpaceFields", fields)])
    }
    fn to_gob(&self) -> Value {
        let inner = strukt(vec![
            ("Guid", self.guid.to_gob()),
            ("Name", self.name.to_gob()),
        ]);
        strukt(vec![("SpaceFields", inner)])
    }
}
impl FromGob for Space {
    fn from_gob(v: &Value) -> Result<Self, GobError> {
        let inner: Value = field(v, "SpaceFields")?;
        Ok(Space {
            guid: field(&inner, "Guid")?,
            name: field(&inner, "Name")?,
        })
    }
}

impl ToGob for Organization {
    fn gob_type() -> Type {
        let fields = Type::structure(
            "OrganizationFields",
            vec![("Guid", Type::String), ("Name", Type::String)],
        );
        Type::structure("Organization", vec![("OrganizationFields", fields)])
    }
    fn to_gob(&self) -> Value {
        let inner = strukt(vec![
            ("Guid", self.guid.to_gob()),
            ("Name", self.name.to_gob()),
        ]);
        strukt(vec![("OrganizationFields", inner)])
    }
}
impl FromGob for Organization {
    fn from_gob(v: &Value) -> Result<Self, GobError> {
        let inner: Value = field(v, "OrganizationFields")?;
        Ok(Organization {
            guid: field(&inner, "Guid")?,
            name: field(&inner, "Name")?,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
