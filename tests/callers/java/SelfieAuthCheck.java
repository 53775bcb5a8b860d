// A Java caller of selfie-auth, built from the contract in proto/ with protoc and the
// grpc-java plugin against Debian's grpc-java (netty), as a platform team would:
// health, a submission that waits, a watch to the end, and the rich error details
// of real refusals.
//
// Usage: java SelfieAuthCheck HOST PORT SELFIE_JPEG
// Every scenario prints one line; the exit status is the number of failures.

import com.google.protobuf.Any;
import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.PreconditionFailure;
import com.google.rpc.ResourceInfo;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.health.v1.HealthCheckRequest;
import io.grpc.health.v1.HealthCheckResponse;
import io.grpc.health.v1.HealthGrpc;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.protobuf.StatusProto;
import io.selfieauth.v1.Decision;
import io.selfieauth.v1.EnrollUserRequest;
import io.selfieauth.v1.GetJobRequest;
import io.selfieauth.v1.JobEvent;
import io.selfieauth.v1.JobEventKind;
import io.selfieauth.v1.JobState;
import io.selfieauth.v1.SelfieAuthGrpc;
import io.selfieauth.v1.SubmitAuthenticationRequest;
import io.selfieauth.v1.WatchJobRequest;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Iterator;
import java.util.concurrent.TimeUnit;

public final class SelfieAuthCheck {
    interface Scenario {
        void run() throws Exception;
    }

    /** A refusal's code and details, by kind. */
    static final class Refusal {
        Status.Code code;
        ErrorInfo info;
        BadRequest badRequest;
        ResourceInfo resource;
        PreconditionFailure precondition;
    }

    interface Call {
        void run();
    }

    static Refusal refused(Call call) throws InvalidProtocolBufferException {
        try {
            call.run();
        } catch (StatusRuntimeException error) {
            Refusal found = new Refusal();
            found.code = error.getStatus().getCode();
            com.google.rpc.Status status = StatusProto.fromThrowable(error);
            for (Any detail : status.getDetailsList()) {
                if (detail.is(ErrorInfo.class)) found.info = detail.unpack(ErrorInfo.class);
                if (detail.is(BadRequest.class)) found.badRequest = detail.unpack(BadRequest.class);
                if (detail.is(ResourceInfo.class)) found.resource = detail.unpack(ResourceInfo.class);
                if (detail.is(PreconditionFailure.class)) found.precondition = detail.unpack(PreconditionFailure.class);
            }
            expect(found.info != null && found.info.getDomain().equals("selfieauth.v1"), status);
            return found;
        }
        throw new AssertionError("the call should have been refused");
    }

    static void expect(boolean condition, Object what) {
        if (!condition) throw new AssertionError("unexpected: " + what);
    }

    public static void main(String[] args) throws Exception {
        ManagedChannel channel = NettyChannelBuilder.forAddress(args[0], Integer.parseInt(args[1])).usePlaintext().build();
        ByteString selfie = ByteString.copyFrom(Files.readAllBytes(Paths.get(args[2])));
        SelfieAuthGrpc.SelfieAuthBlockingStub client = SelfieAuthGrpc.newBlockingStub(channel);
        String user = "java-newcomer-" + ProcessHandle.current().pid();
        String[] names = {
            "health of selfieauth.v1.SelfieAuth is SERVING",
            "EnrollUser and SubmitAuthentication wait for approved results",
            "WatchJob follows a submission to its final event, then ends",
            "a missing user_id is INVALID_ARGUMENT with a BadRequest field violation",
            "an unknown job is NOT_FOUND with ResourceInfo",
            "a second enrolment is FAILED_PRECONDITION with a PreconditionFailure",
        };
        Scenario[] scenarios = {
            () -> {
                HealthCheckResponse health = HealthGrpc.newBlockingStub(channel).withDeadlineAfter(10, TimeUnit.SECONDS)
                    .check(HealthCheckRequest.newBuilder().setService("selfieauth.v1.SelfieAuth").build());
                expect(health.getStatus() == HealthCheckResponse.ServingStatus.SERVING, health);
            },
            () -> {
                var enrolled = client.withDeadlineAfter(20, TimeUnit.SECONDS).enrollUser(EnrollUserRequest.newBuilder()
                    .setUserId(user).setJobId(user + "-enrol").setSelfieImage(selfie).setWaitForResult(true).build());
                expect(enrolled.getJob().getState() == JobState.JOB_STATE_COMPLETED
                    && enrolled.getJob().getDecision() == Decision.DECISION_APPROVED, enrolled);
                var done = client.withDeadlineAfter(20, TimeUnit.SECONDS).submitAuthentication(SubmitAuthenticationRequest.newBuilder()
                    .setUserId(user).setJobId(user + "-auth").setSelfieImage(selfie).setWaitForResult(true).build());
                expect(done.getCreated() && done.getJob().getDecision() == Decision.DECISION_APPROVED, done);
            },
            () -> {
                client.withDeadlineAfter(20, TimeUnit.SECONDS).submitAuthentication(SubmitAuthenticationRequest.newBuilder()
                    .setUserId(user).setJobId(user + "-watched").setSelfieImage(selfie).build());
                Iterator<JobEvent> events = client.withDeadlineAfter(20, TimeUnit.SECONDS)
                    .watchJob(WatchJobRequest.newBuilder().setJobId(user + "-watched").build());
                JobEvent last = null;
                while (events.hasNext()) {
                    JobEvent event = events.next();
                    if (event.getKind() != JobEventKind.JOB_EVENT_KIND_HEARTBEAT) last = event;
                }
                expect(last != null && last.getKind() == JobEventKind.JOB_EVENT_KIND_FINAL_RESULT
                    && last.getJob().getState() == JobState.JOB_STATE_COMPLETED, last);
            },
            () -> {
                Refusal found = refused(() -> client.withDeadlineAfter(20, TimeUnit.SECONDS)
                    .submitAuthentication(SubmitAuthenticationRequest.newBuilder().setSelfieImage(selfie).build()));
                expect(found.code == Status.Code.INVALID_ARGUMENT && found.info.getReason().equals("INVALID_FIELD")
                    && found.badRequest != null && found.badRequest.getFieldViolations(0).getField().equals("user_id"), found.info);
            },
            () -> {
                Refusal found = refused(() -> client.withDeadlineAfter(20, TimeUnit.SECONDS)
                    .getJob(GetJobRequest.newBuilder().setJobId("no-such-job").build()));
                expect(found.code == Status.Code.NOT_FOUND && found.info.getReason().equals("JOB_NOT_FOUND")
                    && "no-such-job".equals(found.info.getMetadataMap().get("jobId"))
                    && found.resource != null && found.resource.getResourceName().equals("jobs/no-such-job"), found.info);
            },
            () -> {
                Refusal found = refused(() -> client.withDeadlineAfter(20, TimeUnit.SECONDS).enrollUser(EnrollUserRequest.newBuilder()
                    .setUserId(user).setJobId(user + "-again").setSelfieImage(selfie).build()));
                expect(found.code == Status.Code.FAILED_PRECONDITION && found.info.getReason().equals("USER_ALREADY_ENROLLED")
                    && "2209".equals(found.info.getMetadataMap().get("smileIdCode"))
                    && found.precondition != null && found.precondition.getViolations(0).getType().equals("USER_ENROLLMENT"), found.info);
            },
        };
        int failures = 0;
        for (int index = 0; index < scenarios.length; index++) {
            try {
                scenarios[index].run();
                System.out.println("ok   " + names[index]);
            } catch (Throwable error) {
                failures++;
                System.out.println("FAIL " + names[index] + ": " + error);
            }
        }
        channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
        System.exit(failures);
    }
}
