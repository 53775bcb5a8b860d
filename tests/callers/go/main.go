// A Go caller of selfie-auth, built from the contract in proto/ with the standard
// plugins (protoc-gen-go, protoc-gen-go-grpc) and Debian's grpc-go, as a platform
// team would: health, a submission that waits, a watch to the end, and the rich
// error details of real refusals.
//
// Usage: selfieauthcheck ADDR SELFIE_JPEG
// Every scenario prints one line; the exit status is the number of failures.
package main

import (
	"context"
	"fmt"
	"io"
	"io/ioutil"
	"os"
	"time"

	pb "github.com/selfie-auth/selfie-auth/gen/go/selfieauth/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

type scenario struct {
	name string
	run  func(ctx context.Context) error
}

// refusal is the status of a call that must fail, with its details by kind.
type refusal struct {
	code         codes.Code
	info         *errdetails.ErrorInfo
	badRequest   *errdetails.BadRequest
	resource     *errdetails.ResourceInfo
	precondition *errdetails.PreconditionFailure
}

func refused(err error) (*refusal, error) {
	if err == nil {
		return nil, fmt.Errorf("the call should have been refused")
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, fmt.Errorf("not a gRPC status: %v", err)
	}
	found := &refusal{code: st.Code()}
	for _, detail := range st.Details() {
		switch detail := detail.(type) {
		case *errdetails.ErrorInfo:
			found.info = detail
		case *errdetails.BadRequest:
			found.badRequest = detail
		case *errdetails.ResourceInfo:
			found.resource = detail
		case *errdetails.PreconditionFailure:
			found.precondition = detail
		}
	}
	if found.info == nil || found.info.Domain != "selfieauth.v1" {
		return nil, fmt.Errorf("no ErrorInfo of selfieauth.v1 in %v", st.Proto())
	}
	return found, nil
}

func main() {
	addr, selfiePath := os.Args[1], os.Args[2]
	selfie, err := ioutil.ReadFile(selfiePath)
	if err != nil {
		panic(err)
	}
	conn, err := grpc.Dial(addr, grpc.WithInsecure(), grpc.WithBlock(), grpc.WithTimeout(10*time.Second))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	client := pb.NewSelfieAuthClient(conn)
	user := fmt.Sprintf("go-newcomer-%d", os.Getpid())

	scenarios := []scenario{
		{"health of selfieauth.v1.SelfieAuth is SERVING", func(ctx context.Context) error {
			answer, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "selfieauth.v1.SelfieAuth"})
			if err != nil || answer.Status != healthpb.HealthCheckResponse_SERVING {
				return fmt.Errorf("health: %v %v", answer, err)
			}
			return nil
		}},
		{"EnrollUser and SubmitAuthentication wait for approved results", func(ctx context.Context) error {
			enrolled, err := client.EnrollUser(ctx, &pb.EnrollUserRequest{UserId: user, JobId: user + "-enrol", SelfieImage: selfie, WaitForResult: true})
			if err != nil || enrolled.Job.State != pb.JobState_JOB_STATE_COMPLETED || enrolled.Job.Decision != pb.Decision_DECISION_APPROVED {
				return fmt.Errorf("enrol: %v %v", enrolled, err)
			}
			done, err := client.SubmitAuthentication(ctx, &pb.SubmitAuthenticationRequest{UserId: user, JobId: user + "-auth", SelfieImage: selfie, WaitForResult: true})
			if err != nil || !done.Created || done.Job.Decision != pb.Decision_DECISION_APPROVED {
				return fmt.Errorf("submit: %v %v", done, err)
			}
			return nil
		}},
		{"WatchJob follows a submission to its final event, then ends", func(ctx context.Context) error {
			if _, err := client.SubmitAuthentication(ctx, &pb.SubmitAuthenticationRequest{UserId: user, JobId: user + "-watched", SelfieImage: selfie}); err != nil {
				return err
			}
			stream, err := client.WatchJob(ctx, &pb.WatchJobRequest{JobId: user + "-watched"})
			if err != nil {
				return err
			}
			var last *pb.JobEvent
			for {
				event, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					return err
				}
				if event.Kind != pb.JobEventKind_JOB_EVENT_KIND_HEARTBEAT {
					last = event
				}
			}
			if last == nil || last.Kind != pb.JobEventKind_JOB_EVENT_KIND_FINAL_RESULT || last.Job.State != pb.JobState_JOB_STATE_COMPLETED {
				return fmt.Errorf("last event: %v", last)
			}
			return nil
		}},
		{"a missing user_id is INVALID_ARGUMENT with a BadRequest field violation", func(ctx context.Context) error {
			_, err := client.SubmitAuthentication(ctx, &pb.SubmitAuthenticationRequest{SelfieImage: selfie})
			found, err := refused(err)
			if err != nil {
				return err
			}
			if found.code != codes.InvalidArgument || found.info.Reason != "INVALID_FIELD" || found.badRequest == nil ||
				len(found.badRequest.FieldViolations) == 0 || found.badRequest.FieldViolations[0].Field != "user_id" {
				return fmt.Errorf("%+v", found)
			}
			return nil
		}},
		{"an unknown job is NOT_FOUND with ResourceInfo", func(ctx context.Context) error {
			_, err := client.GetJob(ctx, &pb.GetJobRequest{JobId: "no-such-job"})
			found, err := refused(err)
			if err != nil {
				return err
			}
			if found.code != codes.NotFound || found.info.Reason != "JOB_NOT_FOUND" || found.info.Metadata["jobId"] != "no-such-job" ||
				found.resource == nil || found.resource.ResourceName != "jobs/no-such-job" {
				return fmt.Errorf("%+v", found)
			}
			return nil
		}},
		{"a second enrolment is FAILED_PRECONDITION with a PreconditionFailure", func(ctx context.Context) error {
			_, err := client.EnrollUser(ctx, &pb.EnrollUserRequest{UserId: user, JobId: user + "-again", SelfieImage: selfie})
			found, err := refused(err)
			if err != nil {
				return err
			}
			if found.code != codes.FailedPrecondition || found.info.Reason != "USER_ALREADY_ENROLLED" || found.info.Metadata["smileIdCode"] != "2209" ||
				found.precondition == nil || len(found.precondition.Violations) == 0 || found.precondition.Violations[0].Type != "USER_ENROLLMENT" {
				return fmt.Errorf("%+v", found)
			}
			return nil
		}},
	}

	failures := 0
	for _, s := range scenarios {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if err := s.run(ctx); err != nil {
			failures++
			fmt.Printf("FAIL %s: %v\n", s.name, err)
		} else {
			fmt.Printf("ok   %s\n", s.name)
		}
		cancel()
	}
	os.Exit(failures)
}
