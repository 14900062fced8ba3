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
//! plugin as its first argument. Imports nothing from the crate outside `cfplugin`.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use secrecy::SecretString;

use super::gob::{field, Decoder, Encoder, FromGob, GobError, ToGob, Type, Value};

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
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::io::Read;
    use std::net::TcpListener;

    /// `go run . capture` in the harness: one Go process, client and server, one TCP
    /// connection per section, every read and write in hex.
    const CAPTURE: &str = include_str!("../../tests/fixtures/cf-plugin/captured-wire-bytes.txt");

    struct Captured {
        title: String,
        /// Each read/write in order: (client to server?, bytes).
        chunks: Vec<(bool, Vec<u8>)>,
    }

    impl Captured {
        fn stream(&self, from_client: bool) -> Vec<u8> {
            let chunks = self.chunks.iter().filter(|(c, _)| *c == from_client);
            chunks.flat_map(|(_, b)| b.clone()).collect()
        }
    }

    fn captured() -> Vec<Captured> {
        let mut sections: Vec<Captured> = Vec::new();
        for line in CAPTURE.lines() {
            if let Some(title) = line.strip_prefix("### ") {
                sections.push(Captured {
                    title: title.to_string(),
                    chunks: Vec::new(),
                });
            } else if let Some((dir, hex)) = line.split_once(' ') {
                let from_client = match dir {
                    "C->S" => true,
                    "S->C" => false,
                    _ => panic!("unexpected line {line:?}"),
                };
                let bytes = hex::decode(hex).unwrap();
                sections
                    .last_mut()
                    .unwrap()
                    .chunks
                    .push((from_client, bytes));
            }
        }
        sections
    }

    type Msg = (Type, Value);

    fn req(method: &str, seq: u64) -> Msg {
        let v = Value::Struct(vec![
            ("ServiceMethod".into(), Value::String(method.into())),
            ("Seq".into(), Value::Uint(seq)),
        ]);
        (request_type(), v)
    }
    fn resp(method: &str, seq: u64, error: &str) -> Msg {
        let v = Value::Struct(vec![
            ("ServiceMethod".into(), Value::String(method.into())),
            ("Seq".into(), Value::Uint(seq)),
            ("Error".into(), Value::String(error.into())),
        ]);
        (response_type(), v)
    }
    fn string(s: &str) -> Msg {
        (Type::String, Value::String(s.into()))
    }
    fn boolean(b: bool) -> Msg {
        (Type::Bool, Value::Bool(b))
    }
    fn strings(items: &[&str]) -> Msg {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        (Vec::<String>::gob_type(), items.to_gob())
    }
    fn empty() -> Msg {
        (Type::empty_struct(), Value::Struct(vec![]))
    }

    /// The harness's `Organization`, quota included (our `Organization` reads only a part).
    fn go_org_type() -> Type {
        let quota = Type::structure(
            "QuotaFields",
            vec![
                ("Guid", Type::String),
                ("Name", Type::String),
                ("MemoryLimit", Type::Int),
                ("InstanceMemoryLimit", Type::Int),
                ("RoutesLimit", Type::Int),
                ("ServicesLimit", Type::Int),
                ("NonBasicServicesAllowed", Type::Bool),
            ],
        );
        let fields = Type::structure(
            "OrganizationFields",
            vec![
                ("Guid", Type::String),
                ("Name", Type::String),
                ("QuotaDefinition", quota),
            ],
        );
        Type::structure("Organization", vec![("OrganizationFields", fields)])
    }

    const ORG_GUID: &str = "e00705b9-7b42-4561-ae97-2520399d2133";
    const SPACE_GUID: &str = "5a84d315-9513-4d74-95e5-f6a5501eeef7";
    const TOKEN: &str = "bearer eyJhbGciOiJSUzI1NiJ9.e30.sig";

    fn capture_metadata() -> PluginMetadata {
        PluginMetadata {
            name: "undo".into(),
            version: VersionType {
                major: 1,
                minor: 2,
                build: 3,
            },
            commands: vec![Command {
                name: "backups".into(),
                alias: "bk".into(),
                help_text: "List backups".into(),
                usage_details: Usage {
                    usage: "cf backups NAME".into(),
                    options: [("--json".to_string(), "JSON output".to_string())].into(),
                },
            }],
            ..PluginMetadata::default()
        }
    }

    /// Per captured section: its title's start, the client's messages, the server's.
    fn expected() -> Vec<(&'static str, Vec<Msg>, Vec<Msg>)> {
        let m = |name: &str| format!("CliRpcCmd.{name}");
        let md = capture_metadata();
        let org = Value::Struct(vec![(
            "OrganizationFields".into(),
            Value::Struct(vec![
                ("Guid".into(), Value::String(ORG_GUID.into())),
                ("Name".into(), Value::String("acme".into())),
                ("QuotaDefinition".into(), Value::Struct(vec![])),
            ]),
        )]);
        let space = Space {
            guid: SPACE_GUID.into(),
            name: "dev".into(),
        };
        let not_found = "rpc: can't find method CliRpcCmd.NoSuchMethod";
        vec![
            (
                "SetPluginMetadata",
                vec![
                    req(&m("SetPluginMetadata"), 0),
                    (PluginMetadata::gob_type(), md.to_gob()),
                ],
                vec![resp(&m("SetPluginMetadata"), 0, ""), boolean(true)],
            ),
            (
                "IsMinCliVersion",
                vec![req(&m("IsMinCliVersion"), 0), string("6.7.0")],
                vec![resp(&m("IsMinCliVersion"), 0, ""), boolean(true)],
            ),
            (
                "GetCurrentSpace",
                vec![req(&m("GetCurrentSpace"), 0), string("")],
                vec![
                    resp(&m("GetCurrentSpace"), 0, ""),
                    (Space::gob_type(), space.to_gob()),
                ],
            ),
            (
                "GetCurrentOrg",
                vec![req(&m("GetCurrentOrg"), 0), string("")],
                vec![resp(&m("GetCurrentOrg"), 0, ""), (go_org_type(), org)],
            ),
            (
                "AccessToken(\"\") then",
                vec![
                    req(&m("AccessToken"), 0),
                    string(""),
                    req(&m("ApiEndpoint"), 1),
                    string(""),
                    req(&m("IsSSLDisabled"), 2),
                    string(""),
                ],
                vec![
                    resp(&m("AccessToken"), 0, ""),
                    string(TOKEN),
                    resp(&m("ApiEndpoint"), 1, ""),
                    string("https://api.example.org"),
                    resp(&m("IsSSLDisabled"), 2, ""),
                    boolean(false),
                ],
            ),
            (
                "CliCommandWithoutTerminalOutput",
                vec![
                    req(&m("DisableTerminalOutput"), 0),
                    boolean(true),
                    req(&m("CallCoreCommand"), 1),
                    strings(&["curl", "/v3/spaces"]),
                    req(&m("GetOutputAndReset"), 2),
                    boolean(true),
                ],
                vec![
                    resp(&m("DisableTerminalOutput"), 0, ""),
                    boolean(true),
                    resp(&m("CallCoreCommand"), 1, ""),
                    boolean(true),
                    resp(&m("GetOutputAndReset"), 2, ""),
                    strings(&[r#"{"resources": []}"#]),
                ],
            ),
            (
                "AccessToken(\"\") returning an error",
                vec![req(&m("AccessToken"), 0), string("")],
                vec![resp(&m("AccessToken"), 0, "not logged in"), empty()],
            ),
            (
                "unknown method",
                vec![req(&m("NoSuchMethod"), 0), string("")],
                vec![resp(&m("NoSuchMethod"), 0, not_found), empty()],
            ),
        ]
    }

    fn sections() -> Vec<(Captured, Vec<Msg>, Vec<Msg>)> {
        let captured = captured();
        let expected = expected();
        assert_eq!(captured.len(), expected.len(), "sections in the capture");
        captured
            .into_iter()
            .zip(expected)
            .map(|(cap, (title, client, server))| {
                assert!(
                    cap.title.starts_with(title),
                    "{:?} is not {title:?}",
                    cap.title
                );
                (cap, client, server)
            })
            .collect()
    }

    #[test]
    fn decodes_every_captured_message_in_both_directions() {
        for (cap, client, server) in sections() {
            for (from_client, msgs) in [(true, client), (false, server)] {
                let bytes = cap.stream(from_client);
                let mut decoder = Decoder::new(bytes.as_slice());
                for (i, (_, want)) in msgs.iter().enumerate() {
                    let got = decoder
                        .decode()
                        .unwrap_or_else(|e| panic!("{}: #{i}: {e}", cap.title));
                    assert_eq!(
                        got,
                        want.canonical(),
                        "{} (client: {from_client}) #{i}",
                        cap.title
                    );
                }
                assert!(
                    matches!(decoder.decode(), Err(GobError::Eof)),
                    "{}: more",
                    cap.title
                );
            }
        }
    }

    #[test]
    fn captured_replies_convert_to_typed_values() {
        let sections = sections();
        let value = |section: usize, from_client: bool, index: usize| {
            let bytes = sections[section].0.stream(from_client);
            let mut decoder = Decoder::new(bytes.as_slice());
            (0..index).for_each(|_| drop(decoder.decode().unwrap()));
            decoder.decode().unwrap()
        };
        assert_eq!(
            PluginMetadata::from_gob(&value(0, true, 1)).unwrap(),
            capture_metadata()
        );
        let space = Space::from_gob(&value(2, false, 1)).unwrap();
        assert_eq!(
            (space.guid.as_str(), space.name.as_str()),
            (SPACE_GUID, "dev")
        );
        // The quota the harness sends is skipped.
        let org = Organization::from_gob(&value(3, false, 1)).unwrap();
        assert_eq!((org.guid.as_str(), org.name.as_str()), (ORG_GUID, "acme"));
        assert_eq!(String::from_gob(&value(4, false, 1)).unwrap(), TOKEN);
        let output = Vec::<String>::from_gob(&value(5, false, 5)).unwrap();
        assert_eq!(output, [r#"{"resources": []}"#]);
    }

    /// Type ids are per process and the capture ran Go's client and server in one process:
    /// Request took 65, PluginMetadata and its parts 66–71, Response 72, Space 73–74,
    /// Organization 75–77, []string 78, struct{} 79. Numbering the same types in the same
    /// order reproduces every captured byte, both directions.
    #[test]
    fn encodes_every_captured_message_byte_for_byte() {
        let capture_process = [
            request_type(),
            PluginMetadata::gob_type(),
            response_type(),
            Space::gob_type(),
            go_org_type(),
            Vec::<String>::gob_type(),
            Type::empty_struct(),
        ];
        for (cap, client, server) in sections() {
            for (from_client, msgs) in [(true, client), (false, server)] {
                let mut encoder = Encoder::new();
                for ty in &capture_process {
                    encoder.type_id(ty);
                }
                let mut out = Vec::new();
                for (ty, v) in &msgs {
                    encoder.encode(&mut out, ty, v).unwrap();
                }
                let want = hex::encode(cap.stream(from_client));
                assert_eq!(
                    hex::encode(out),
                    want,
                    "{} (client: {from_client})",
                    cap.title
                );
            }
        }
    }

    /// A plugin process starts numbering afresh, as the capture process did before its first
    /// call: the metadata call matches the capture with no help.
    #[test]
    fn a_fresh_encoder_numbers_types_as_a_fresh_go_process() {
        let (cap, client, _) = sections().remove(0);
        let mut out = Vec::new();
        let mut encoder = Encoder::new();
        for (ty, v) in &client {
            encoder.encode(&mut out, ty, v).unwrap();
        }
        assert_eq!(hex::encode(out), hex::encode(cap.stream(true)));
    }

    /// A server that expects the captured client bytes and answers with the captured server
    /// bytes, one connection per section.
    fn replay(sections: Vec<Captured>) -> (u16, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for section in sections {
                let (mut conn, _) = listener.accept().unwrap();
                for (from_client, bytes) in section.chunks {
                    if from_client {
                        let mut got = vec![0; bytes.len()];
                        conn.read_exact(&mut got).unwrap();
                        assert_eq!(hex::encode(got), hex::encode(bytes), "{}", section.title);
                    } else {
                        conn.write_all(&bytes).unwrap();
                    }
                }
            }
        });
        (port, server)
    }

    /// Sections whose client bytes a fresh plugin process reproduces (not the core-command
    /// one: there the capture's []string had id 78, a fresh process gives it 66).
    #[test]
    fn client_calls_match_the_capture_against_a_replaying_server() {
        let mut wanted = captured();
        wanted.remove(5);
        let (port, server) = replay(wanted);
        let md = Client::connect(port)
            .unwrap()
            .set_plugin_metadata(&capture_metadata());
        assert!(md.unwrap());
        assert!(Client::connect(port)
            .unwrap()
            .is_min_cli_version("6.7.0")
            .unwrap());
        let space = Client::connect(port).unwrap().get_current_space().unwrap();
        assert_eq!(
            space,
            Space {
                guid: SPACE_GUID.into(),
                name: "dev".into()
            }
        );
        let org = Client::connect(port).unwrap().get_current_org().unwrap();
        assert_eq!(
            org,
            Organization {
                guid: ORG_GUID.into(),
                name: "acme".into()
            }
        );

        let mut cf = Client::connect(port).unwrap();
        assert_eq!(cf.access_token().unwrap().expose_secret(), TOKEN);
        assert_eq!(cf.api_endpoint().unwrap(), "https://api.example.org");
        assert!(!cf.is_ssl_disabled().unwrap());

        let err = Client::connect(port).unwrap().access_token().unwrap_err();
        assert!(
            matches!(&err, RpcError::Server { message, .. } if message == "not logged in"),
            "{err:?}"
        );
        let err = Client::connect(port)
            .unwrap()
            .call::<str, String>("CliRpcCmd.NoSuchMethod", "");
        assert!(matches!(err, Err(RpcError::Server { .. })));
        server.join().unwrap();
    }

    #[test]
    fn mismatched_replies_and_dead_servers_are_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sections = captured();
        let server = std::thread::spawn(move || {
            // A string reply where a bool is expected, then a hang-up.
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = vec![0; sections[4].chunks[0].1.len()];
            conn.read_exact(&mut request).unwrap();
            conn.write_all(&sections[4].chunks[1].1).unwrap();
            let (conn, _) = listener.accept().unwrap();
            drop(conn);
        });
        let mut cf = Client::connect(port).unwrap();
        let err = cf
            .call::<str, bool>("CliRpcCmd.AccessToken", "")
            .unwrap_err();
        assert!(matches!(err, RpcError::Protocol { .. }), "{err:?}");
        let err = Client::connect(port).unwrap().api_endpoint().unwrap_err();
        assert!(matches!(err, RpcError::Transport { .. }), "{err:?}");
        server.join().unwrap();
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(
            Client::connect(closed),
            Err(RpcError::Connect { .. })
        ));
    }
}
