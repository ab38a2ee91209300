//! Leader election on a coordination.k8s.io/v1 Lease, so that two operator replicas are safe:
//! only the holder reconciles; the other waits and takes over when the lease expires or is
//! released. Updates use the Lease's resourceVersion, so two candidates cannot both win.
//!
//! Expiry is judged on this replica's own clock: a lease is expired when its record (holder
//! and renew time) has not changed for the lease duration since this replica first saw it,
//! never by comparing the holder's renewTime with our wall clock (the replicas' clocks may
//! disagree).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tracing::{info, warn};

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    retry_period: Duration,
    observed: Mutex<LeaseObservation>,
}

/// The last lease record this replica saw another holder keep, and when (on our clock) it
/// first saw it.
#[derive(Debug, Default)]
pub struct LeaseObservation {
    record: Option<(String, Option<MicroTime>)>,
    since: Option<Instant>,
}

impl LeaseObservation {
    /// Notes the record seen `now`; true when it has stood unchanged for longer than
    /// `duration` since this replica first saw it.
    pub fn expired(
        &mut self,
        holder: &str,
        renewed: Option<&MicroTime>,
        duration: Duration,
        now: Instant,
    ) -> bool {
        let record = (holder.to_string(), renewed.cloned());
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record);
            self.since = Some(now);
        }
        self.since
            .is_some_and(|since| now.saturating_duration_since(since) > duration)
    }
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
            observed: Mutex::new(LeaseObservation::default()),
        }
    }

    fn now() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(Self::now)),
            renew_time: Some(Self::now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or renew the lease; `Ok(true)` when we hold it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let new_spec = if holder == self.identity {
            self.spec(transitions, spec.acquire_time.clone())
        } else {
            let duration = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
            );
            let expired = self.observed.lock().expect("lease observation").expired(
                &holder,
                spec.renew_time.as_ref(),
                duration,
                Instant::now(),
            );
            if !holder.is_empty() && !expired {
                return Ok(false);
            }
            self.spec(transitions + 1, None)
        };
        lease.spec = Some(new_spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the lease.
    pub async fn acquire(&self) {
        info!(lease = %self.name, identity = %self.identity, "waiting for leadership");
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.retry_period).await;
        }
    }

    /// Renews the lease until it cannot be renewed within its duration; then returns, and the
    /// caller must stop acting as leader.
    pub async fn hold(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "leadership lost to another replica");
                    return;
                }
                Err(e) => warn!(error = %e, "renewing the lease failed"),
            }
            // Stop before the lease can expire for others, so two leaders never overlap.
            if last_renewal.elapsed() > self.lease_duration * 2 / 3 {
                warn!(lease = %self.name, "could not renew the lease in time");
                return;
            }
        }
    }

    /// Gives the lease up on a clean shutdown, so that a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            warn!(error = %e, "releasing the lease failed");
        } else {
            info!(lease = %self.name, "leadership released");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> MicroTime {
        MicroTime(jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn a_lease_expires_by_our_clock_from_when_we_saw_it_change() {
        let start = Instant::now();
        let lease = Duration::from_secs(15);
        let mut seen = LeaseObservation::default();
        // The holder's renewTime is far in the past by our wall clock (its clock is behind):
        // that alone does not make the lease expired.
        assert!(!seen.expired("a", Some(&at(1_000)), lease, start));
        assert!(!seen.expired(
            "a",
            Some(&at(1_000)),
            lease,
            start + Duration::from_secs(10)
        ));
        // A renewal restarts the count.
        assert!(!seen.expired(
            "a",
            Some(&at(1_002)),
            lease,
            start + Duration::from_secs(14)
        ));
        assert!(!seen.expired(
            "a",
            Some(&at(1_002)),
            lease,
            start + Duration::from_secs(28)
        ));
        // Unchanged for longer than the lease: expired.
        assert!(seen.expired(
            "a",
            Some(&at(1_002)),
            lease,
            start + Duration::from_secs(30)
        ));
        // A new holder is a new record.
        assert!(!seen.expired("b", Some(&at(5)), lease, start + Duration::from_secs(31)));
    }
}
