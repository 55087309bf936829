//! A Spark Connect session: SQL and file reads in, Arrow record batches out, client rows up
//! as temporary views. Only what the engine needs; the protocol subset is in
//! `proto/spark/connect/larder_subset.proto`.

use std::collections::HashMap;
use std::io::Cursor;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use futures::{Stream, StreamExt};

use crate::SparkError;

#[allow(missing_docs, clippy::all)]
mod proto {
    tonic::include_proto!("spark.connect");
}

use proto::spark_connect_service_client::SparkConnectServiceClient;
use proto::{
    Command, CreateDataFrameViewCommand, ExecutePlanRequest, LocalRelation, Plan, Read, Relation,
    ReleaseSessionRequest, Sql, UserContext, WriteOperation, command, execute_plan_response, plan,
    read, relation, write_operation,
};

/// The largest gRPC message either side sends: Spark's Arrow result batches are ~4 MiB by
/// default and Larder's uploads are cut to [`UPLOAD_CHUNK_BYTES`], but a single wide row may
/// exceed both.
const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// The most Arrow IPC bytes in one uploaded local relation (Spark Connect servers refuse
/// messages over `spark.connect.grpc.maxInboundMessageSize`, 128 MiB by default).
const UPLOAD_CHUNK_BYTES: usize = 32 << 20;

/// A client-side name for logs on the server.
const CLIENT_TYPE: &str = "larder";

/// One Spark Connect session: its temporary views and settings live on the server until the
/// session is released (or the server drops it after its idle timeout).
#[derive(Clone)]
pub struct SparkSession {
    client: SparkConnectServiceClient<tonic::transport::Channel>,
    session_id: String,
    remote: String,
}

impl std::fmt::Debug for SparkSession {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SparkSession")
            .field("remote", &self.remote)
            .field("session_id", &self.session_id)
            .finish()
    }
}

/// Turns `sc://host:port[/;param=value...]` into the gRPC endpoint `http://host:port`
/// (port 15002 when left out).
pub fn endpoint_of(remote: &str) -> Result<String, SparkError> {
    let invalid = |why: &str| SparkError::Config(format!("Spark remote '{remote}': {why}"));
    let rest = remote
        .strip_prefix("sc://")
        .ok_or_else(|| invalid("expected sc://host:port"))?;
    let authority = rest.split(['/', ';']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(invalid("no host"));
    }
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, port)| {
        !port.is_empty() && port.chars().all(|character| character.is_ascii_digit())
    }) {
        authority.to_string()
    } else {
        format!("{authority}:15002")
    };
    Ok(format!("http://{with_port}"))
}

/// A random UUID (version 4), the form Spark Connect requires of session ids.
fn new_uuid() -> Result<String, SparkError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| SparkError::Config(format!("no randomness for a session id: {error}")))?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// A stream of record batches and their schema, read from one `ExecutePlan` call.
pub struct BatchStream {
    /// The rows' schema (from the first Arrow batch, which Spark sends even for no rows).
    pub schema: SchemaRef,
    /// The remaining batches, in Spark's result order.
    pub batches: std::pin::Pin<Box<dyn Stream<Item = Result<RecordBatch, SparkError>> + Send>>,
}

impl SparkSession {
    /// Connects to a Spark Connect server (`sc://host:port`) and starts a session with UTC
    /// timestamps and ANSI double-quoted identifiers (so `"column"` means what it means in
    /// DataFusion and in Larder's generated SQL).
    pub async fn connect(remote: &str, connect_timeout: Duration) -> Result<Self, SparkError> {
        let endpoint = endpoint_of(remote)?;
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .map_err(|error| SparkError::Config(format!("Spark remote '{remote}': {error}")))?
            .connect_timeout(connect_timeout)
            .connect()
            .await
            .map_err(|error| SparkError::Unreachable {
                remote: remote.to_string(),
                message: format!("{error} ({endpoint})"),
            })?;
        let client = SparkConnectServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let session = Self {
            client,
            session_id: new_uuid()?,
            remote: remote.to_string(),
        };
        for setting in [
            "SET spark.sql.session.timeZone=UTC",
            "SET spark.sql.ansi.enabled=true",
            "SET spark.sql.ansi.doubleQuotedIdentifiers=true",
            // Parquet timestamps as Larder writes them (not Spark's legacy INT96).
            "SET spark.sql.parquet.outputTimestampType=TIMESTAMP_MICROS",
        ] {
            session.collect_sql(setting).await?;
        }
        Ok(session)
    }

    /// The server this session runs on (`sc://...`).
    pub fn remote(&self) -> &str {
        &self.remote
    }

    fn user_context() -> UserContext {
        UserContext {
            user_id: CLIENT_TYPE.to_string(),
            user_name: CLIENT_TYPE.to_string(),
        }
    }

    fn sql_relation(sql: &str) -> Relation {
        Relation {
            rel_type: Some(relation::RelType::Sql(Sql {
                query: sql.to_string(),
            })),
        }
    }

    async fn execute(
        &self,
        plan: Plan,
    ) -> Result<tonic::Streaming<proto::ExecutePlanResponse>, SparkError> {
        let request = ExecutePlanRequest {
            session_id: self.session_id.clone(),
            user_context: Some(Self::user_context()),
            plan: Some(plan),
            client_type: Some(CLIENT_TYPE.to_string()),
            operation_id: None,
        };
        let mut client = self.client.clone();
        let response = client
            .execute_plan(request)
            .await
            .map_err(|status| self.status_error(status))?;
        Ok(response.into_inner())
    }

    fn status_error(&self, status: tonic::Status) -> SparkError {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => SparkError::Unreachable {
                remote: self.remote.clone(),
                message: status.message().to_string(),
            },
            _ => SparkError::Rejected(status.message().to_string()),
        }
    }

    /// Runs a plan and streams its rows.
    async fn stream_plan(&self, plan: Plan) -> Result<BatchStream, SparkError> {
        let mut responses = self.execute(plan).await?;
        let session = self.clone();
        // Spark sends at least one Arrow batch (a schema-only one for no rows) before
        // anything else that carries rows.
        let mut first: Option<(SchemaRef, Vec<RecordBatch>)> = None;
        while first.is_none() {
            let Some(response) = responses
                .next()
                .await
                .transpose()
                .map_err(|status| session.status_error(status))?
            else {
                break;
            };
            if let Some(execute_plan_response::ResponseType::ArrowBatch(batch)) =
                response.response_type
            {
                first = Some(decode_ipc(&batch.data)?);
            }
        }
        let Some((schema, first_batches)) = first else {
            return Err(SparkError::Protocol(
                "the server ended the result without an Arrow batch".to_string(),
            ));
        };
        let rest = futures::stream::unfold(
            (responses, session),
            |(mut responses, session)| async move {
                loop {
                    match responses.next().await {
                        None => return None,
                        Some(Err(status)) => {
                            let error = session.status_error(status);
                            return Some((Err(error), (responses, session)));
                        }
                        Some(Ok(response)) => {
                            if let Some(execute_plan_response::ResponseType::ArrowBatch(batch)) =
                                response.response_type
                            {
                                let decoded = decode_ipc(&batch.data).map(|(_, batches)| batches);
                                return Some((decoded, (responses, session)));
                            }
                        }
                    }
                }
            },
        )
        .flat_map(|decoded| {
            let items: Vec<Result<RecordBatch, SparkError>> = match decoded {
                Ok(batches) => batches.into_iter().map(Ok).collect(),
                Err(error) => vec![Err(error)],
            };
            futures::stream::iter(items)
        });
        let batches = futures::stream::iter(first_batches.into_iter().map(Ok)).chain(rest);
        Ok(BatchStream {
            schema,
            batches: Box::pin(batches),
        })
    }

    /// Runs a SQL query and streams its rows.
    pub async fn stream_sql(&self, sql: &str) -> Result<BatchStream, SparkError> {
        self.stream_plan(Plan {
            op_type: Some(plan::OpType::Root(Self::sql_relation(sql))),
        })
        .await
    }

    /// Runs a SQL statement or query and collects its rows.
    pub async fn collect_sql(
        &self,
        sql: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SparkError> {
        let stream = self.stream_sql(sql).await?;
        let batches: Vec<RecordBatch> = stream
            .batches
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok((stream.schema, batches))
    }

    async fn run_command(&self, command: command::CommandType) -> Result<(), SparkError> {
        let mut responses = self
            .execute(Plan {
                op_type: Some(plan::OpType::Command(Command {
                    command_type: Some(command),
                })),
            })
            .await?;
        while let Some(response) = responses.next().await {
            response.map_err(|status| self.status_error(status))?;
        }
        Ok(())
    }

    async fn create_view(&self, name: &str, input: Relation) -> Result<(), SparkError> {
        self.run_command(command::CommandType::CreateDataframeView(
            CreateDataFrameViewCommand {
                input: Some(input),
                name: name.to_string(),
                is_global: false,
                replace: true,
            },
        ))
        .await
    }

    /// Registers files read by one of Spark's data sources (`parquet`, `csv`, ...) as the
    /// temporary view `name`.
    pub async fn create_file_view(
        &self,
        name: &str,
        format: &str,
        paths: Vec<String>,
        options: HashMap<String, String>,
    ) -> Result<(), SparkError> {
        let read = Read {
            read_type: Some(read::ReadType::DataSource(read::DataSource {
                format: Some(format.to_string()),
                schema: None,
                options,
                paths,
            })),
        };
        self.create_view(
            name,
            Relation {
                rel_type: Some(relation::RelType::Read(read)),
            },
        )
        .await
    }

    /// Writes the rows of a SQL query as Parquet files under `path` (replacing what is
    /// there), in `partition_by` folders (`column=value/`), from Spark's executors.
    pub async fn write_parquet(
        &self,
        sql: &str,
        path: &str,
        partition_by: &[String],
        options: HashMap<String, String>,
    ) -> Result<(), SparkError> {
        self.run_command(command::CommandType::WriteOperation(WriteOperation {
            input: Some(Self::sql_relation(sql)),
            source: Some("parquet".to_string()),
            save_type: Some(write_operation::SaveType::Path(path.to_string())),
            mode: write_operation::SaveMode::Overwrite as i32,
            partitioning_columns: partition_by.to_vec(),
            options,
        }))
        .await
    }

    /// Registers a SQL query as the temporary view `name`.
    pub async fn create_sql_view(&self, name: &str, sql: &str) -> Result<(), SparkError> {
        self.create_view(name, Self::sql_relation(sql)).await
    }

    /// Uploads rows as the temporary view `name`: Arrow IPC in local relations of at most
    /// [`UPLOAD_CHUNK_BYTES`] each, united by a view when there are several. The batches must
    /// use types Spark reads from Arrow (signed integers, not unsigned).
    pub async fn upload_view(
        &self,
        name: &str,
        schema: &SchemaRef,
        mut batches: impl Stream<Item = Result<RecordBatch, SparkError>> + Unpin,
    ) -> Result<(), SparkError> {
        let mut parts: Vec<String> = Vec::new();
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_bytes = 0usize;
        loop {
            let next = batches.next().await.transpose()?;
            let flush = match &next {
                Some(batch) => {
                    pending_bytes += batch.get_array_memory_size();
                    pending.push(batch.clone());
                    pending_bytes >= UPLOAD_CHUNK_BYTES
                }
                None => !pending.is_empty() || parts.is_empty(),
            };
            if flush {
                let part = format!("{name}__part{}", parts.len());
                let data = encode_ipc(schema, &pending)?;
                self.create_view(
                    &part,
                    Relation {
                        rel_type: Some(relation::RelType::LocalRelation(LocalRelation {
                            data: Some(data),
                            schema: None,
                        })),
                    },
                )
                .await?;
                parts.push(part);
                pending.clear();
                pending_bytes = 0;
            }
            if next.is_none() {
                break;
            }
        }
        let union = parts
            .iter()
            .map(|part| format!("SELECT * FROM `{part}`"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        self.create_sql_view(name, &union).await
    }

    /// Drops a temporary view (no error when it does not exist).
    pub async fn drop_view(&self, name: &str) -> Result<(), SparkError> {
        self.collect_sql(&format!("DROP VIEW IF EXISTS `{name}`"))
            .await
            .map(|_| ())
    }

    /// Ends the session on the server (its temporary views go with it).
    pub async fn release(&self) -> Result<(), SparkError> {
        let mut client = self.client.clone();
        client
            .release_session(ReleaseSessionRequest {
                session_id: self.session_id.clone(),
                user_context: Some(Self::user_context()),
                client_type: Some(CLIENT_TYPE.to_string()),
            })
            .await
            .map_err(|status| self.status_error(status))?;
        Ok(())
    }
}

/// Decodes one Arrow IPC stream (a schema, then record batches).
fn decode_ipc(data: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), SparkError> {
    let reader = StreamReader::try_new(Cursor::new(data), None)
        .map_err(|error| SparkError::Protocol(format!("reading an Arrow batch: {error}")))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| SparkError::Protocol(format!("reading an Arrow batch: {error}")))?;
    Ok((schema, batches))
}

/// Encodes record batches as one Arrow IPC stream.
fn encode_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, SparkError> {
    let failed = |error: arrow::error::ArrowError| {
        SparkError::Protocol(format!("encoding rows for Spark: {error}"))
    };
    let mut writer = StreamWriter::try_new(Vec::new(), schema.as_ref()).map_err(failed)?;
    for batch in batches {
        writer.write(batch).map_err(failed)?;
    }
    writer.into_inner().map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_become_grpc_endpoints() {
        assert_eq!(
            endpoint_of("sc://localhost:15002").ok(),
            Some("http://localhost:15002".to_string())
        );
        assert_eq!(
            endpoint_of("sc://spark.example.com/;user_id=a").ok(),
            Some("http://spark.example.com:15002".to_string())
        );
        assert!(endpoint_of("http://localhost:15002").is_err());
        assert!(endpoint_of("sc://").is_err());
    }

    #[test]
    fn session_ids_are_version_4_uuids() {
        let id = new_uuid().unwrap_or_default();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_uuid().unwrap_or_default());
    }
}
