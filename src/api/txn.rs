//! The transaction calls' arguments and replies (the coordinator is `controller::txn`), and
//! what DescribeProducers shows of the producers the controller tracks.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum TxnStatus {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnStatus {
    /// Kafka's state names (DescribeTransactions, ListTransactions filters).
    pub fn kafka_name(self) -> &'static str {
        match self {
            TxnStatus::Empty => "Empty",
            TxnStatus::Ongoing => "Ongoing",
            TxnStatus::PrepareCommit => "PrepareCommit",
            TxnStatus::PrepareAbort => "PrepareAbort",
            TxnStatus::CompleteCommit => "CompleteCommit",
            TxnStatus::CompleteAbort => "CompleteAbort",
        }
    }

    pub fn preparing(self) -> bool {
        matches!(self, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort)
    }

    /// No transaction in progress: the only states in which a transactional id may expire.
    pub fn idle(self) -> bool {
        matches!(self, TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort)
    }
}

/// The markers a Prepare* transaction needs: one control batch per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnEnd {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The epoch written in the markers (bumped when the coordinator aborts on its own).
    pub epoch: i16,
    pub commit: bool,
    #[serde(with = "crate::api::serde_with::uuid_parts")]
    pub partitions: Vec<(Uuid, i32)>,
}

/// The transaction protocol version (the `transaction.version` feature, Kafka's
/// `TransactionVersion`) from which the coordinator bumps the epoch at every EndTxn and Produce
/// and TxnOffsetCommit add their partition or group themselves (KIP-890 part 2). Clients use it
/// with EndTxn v5, Produce v12 and TxnOffsetCommit v5.
pub const TXN_VERSION_EPOCH_BUMP: i16 = 2;

/// What EndTxn gets: the markers to write (None: a retry whose outcome is already complete)
/// and the producer id and epoch the client goes on with once the transaction is complete
/// (EndTxn v5; unchanged below transaction version 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndAnswer {
    pub markers: Option<TxnEnd>,
    pub producer_id: i64,
    pub epoch: i16,
}

/// What InitProducerId with a transactional id gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnInit {
    Ready {
        producer_id: i64,
        epoch: i16,
    },
    /// A previous transaction must be finished first: write these markers, then ask again.
    Finish(TxnEnd),
}

/// One transaction as DescribeTransactions and ListTransactions show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnDescription {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    pub status: TxnStatus,
    pub timeout_ms: i32,
    pub started_ms: i64,
    /// Topic names and partitions.
    pub partitions: Vec<(String, i32)>,
}

/// One producer in one partition as DescribeProducers shows it: what the controller keeps for
/// its sequence check (`controller::producers`) and its open transaction there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerDescription {
    pub producer_id: i64,
    pub epoch: i16,
    /// The last sequence of its last batch in the partition (-1: none kept).
    pub last_sequence: i32,
    /// When the controller last committed a batch of it (ms since the epoch).
    pub last_timestamp_ms: i64,
    /// The first offset of its open transaction in the partition, else -1.
    pub current_txn_start_offset: i64,
}
