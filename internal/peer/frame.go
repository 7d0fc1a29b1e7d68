package peer

import (
	"encoding/binary"
	"errors"
	"fmt"

	pb "go.etcd.io/raft/v3/raftpb"
)

// MaxFrame bounds one frame of Raft messages (a request's body, or a
// stream's frame); a sender's batches stay under maxBatchBytes, plus one
// message (at most Raft's MaxSizePerMsg, 1 MiB, unless one entry alone is
// larger).
const (
	MaxFrame      = 64 << 20
	maxBatchBytes = 8 << 20
)

// Report is a leader's report of the index it has applied (see
// consensus.Node.WaitLeaderApplied); the zero Report reports nothing.
type Report struct {
	From, Applied uint64
}

// EncodeFrame is the one encoding of a batch of Raft messages, in a
// request's body and in a stream's frame alike (version 2): what the
// sender, from, has applied as leader (a uvarint; 0 when it does not
// lead), followed by from (a uvarint) when not 0, then each message as its
// length (a uvarint) and its protobuf encoding. A frame may carry a
// report and no message.
func EncodeFrame(leaderApplied, from uint64, msgs []pb.Message) ([]byte, error) {
	size := 2 * binary.MaxVarintLen64
	for i := range msgs {
		size += binary.MaxVarintLen64 + msgs[i].Size()
	}
	b := make([]byte, 0, size)
	b = binary.AppendUvarint(b, leaderApplied)
	if leaderApplied > 0 {
		b = binary.AppendUvarint(b, from)
	}
	for i := range msgs {
		n := msgs[i].Size()
		b = binary.AppendUvarint(b, uint64(n))
		b = b[:len(b)+n]
		if _, err := msgs[i].MarshalTo(b[len(b)-n:]); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// DecodeFrame reverses EncodeFrame for a frame of protocol version
// version: the report it carries, and the messages.
func DecodeFrame(version int, b []byte) (report Report, msgs []pb.Message, err error) {
	if version < 2 {
		return decodeFrameV1(b)
	}
	applied, k := binary.Uvarint(b)
	if k <= 0 {
		return report, nil, errors.New("malformed raft message frame")
	}
	b = b[k:]
	if applied > 0 {
		from, k := binary.Uvarint(b)
		if k <= 0 {
			return report, nil, errors.New("malformed raft message frame")
		}
		b, report = b[k:], Report{From: from, Applied: applied}
	}
	if msgs, err = decodeMessages(b, nil); err != nil {
		return Report{}, nil, err
	}
	return report, msgs, nil
}

// decodeMessages decodes length-prefixed messages; skip, if not nil,
// says which to leave out.
func decodeMessages(b []byte, skip func(m *pb.Message) bool) ([]pb.Message, error) {
	var msgs []pb.Message
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, errors.New("malformed raft message frame")
		}
		var m pb.Message
		if err := m.Unmarshal(b[k : k+int(n)]); err != nil {
			return nil, fmt.Errorf("decode raft message: %w", err)
		}
		b = b[k+int(n):]
		if skip != nil && skip(&m) {
			continue
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// appliedMarkerV1 marks, in a version-1 frame, the message that carries
// the leader's applied index: a MsgHup (a type Raft never takes from the
// network) whose Context is the marker and whose Index is the report.
var appliedMarkerV1 = []byte("ddb:leader-applied")

// decodeFrameV1 reads a frame from a node of version 1 (no leading
// report; the report, if any, is a marked message among the others).
func decodeFrameV1(b []byte) (report Report, msgs []pb.Message, err error) {
	msgs, err = decodeMessages(b, func(m *pb.Message) bool {
		if m.Type != pb.MsgHup || string(m.Context) != string(appliedMarkerV1) {
			return false
		}
		if m.Index > report.Applied {
			report = Report{From: m.From, Applied: m.Index}
		}
		return true
	})
	if err != nil {
		return Report{}, nil, err
	}
	return report, msgs, nil
}

// encodeFrame encodes a frame for a peer that speaks version (see
// Client.learn): version 1 carries the report as a marked message, to
// that peer (to).
func encodeFrame(version int, leaderApplied, from, to uint64, msgs []pb.Message) ([]byte, error) {
	if version >= 2 {
		return EncodeFrame(leaderApplied, from, msgs)
	}
	if leaderApplied > 0 {
		msgs = append([]pb.Message{{Type: pb.MsgHup, From: from, To: to, Index: leaderApplied, Context: appliedMarkerV1}}, msgs...)
	}
	var b []byte
	for _, m := range msgs {
		data, err := m.Marshal()
		if err != nil {
			return nil, err
		}
		b = binary.AppendUvarint(b, uint64(len(data)))
		b = append(b, data...)
	}
	return b, nil
}
