//! `POST /v1/custody/rekey`: k approvals, a new key, the database reopened under it, and the
//! old key retired once the sweep is verified.

use super::*;

impl Gate {
    /// `POST /v1/custody/rekey`: one custodian's approval; the k-th makes a new master key,
    /// hands out its shares (in this answer), and reopens the database under it with the
    /// old key decrypt-only: the online sweep moves every record; the old key is kept until
    /// the sweep is verified and the key retired ([`Gate::finish_rekey`]).
    pub fn rekey(&self, request: &Approval, now: i64) -> Result<SignedResponse, CustodyError> {
        self.handle(
            "custody_rekey_refused",
            &request.custodian,
            now,
            Self::check_open,
            |custody, state| self.try_rekey(custody, state, request, now),
        )
    }

    fn try_rekey(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        request: &Approval,
        now: i64,
    ) -> Result<SignedResponse, CustodyError> {
        custody.check_approval(state, request, Purpose::Rekey)?;
        if let Some(previous) = state.previous.first() {
            return Err(CustodyError::RekeyInProgress(previous.key_id().to_string()));
        }
        if state.approvals.contains(&request.custodian) {
            return Err(CustodyError::ShareReplayed(request.custodian.clone()));
        }
        let old = state
            .master
            .as_ref()
            .ok_or(CustodyError::Internal)?
            .duplicate();
        state.approvals.push(request.custodian.clone());
        state.record(Event::new(
            now,
            "custody_rekey_approved",
            &old.key_id().to_string(),
            vec![request.custodian.clone()],
        ));
        let mut reply = RekeyReply {
            typ: REKEY_TYP.into(),
            attempt: request.attempt.clone(),
            custodian: request.custodian.clone(),
            state: "approving".into(),
            approvals: state.approvals.clone(),
            threshold: custody.roster.threshold,
            key_id: None,
            previous_key_id: None,
            shares: Vec::new(),
        };
        if state.approvals.len() < usize::from(custody.roster.threshold) {
            self.write_events(state);
            return self.sign(&reply);
        }
        let new = MasterKey::generate().map_err(|_| CustodyError::Internal)?;
        reply.shares = custody.split(&new)?;
        reply.state = "rekeyed".into();
        reply.key_id = Some(new.key_id().to_string());
        reply.previous_key_id = Some(old.key_id().to_string());
        // Signed before the switch: once the new key may be registered, its shares must
        // reach the custodians whatever happens next.
        let signed = self.sign(&reply)?;
        let approvals = std::mem::take(&mut state.approvals);
        state.attempt = new_attempt()?;
        self.switch(custody, state, new, old, approvals, now)?;
        Ok(signed)
    }

    /// Reopens the database under `new` with `old` decrypt-only, once the requests in flight
    /// on the old service have finished.
    fn switch(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        new: MasterKey,
        old: MasterKey,
        approvals: Vec<String>,
        now: i64,
    ) -> Result<(), CustodyError> {
        let Some(service) = self.current() else {
            return Err(CustodyError::Sealed);
        };
        self.switching.store(true, Ordering::SeqCst);
        *self.service.write().unwrap_or_else(|p| p.into_inner()) = None;
        custody.opener.close(&service);
        let deadline = Instant::now() + SWITCH_WAIT;
        while Arc::strong_count(&service) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if Arc::strong_count(&service) > 1 {
            // Nothing registered yet: the old key stays, the new one is forgotten.
            let resumed = custody.opener.resume(&service);
            *self.service.write().unwrap_or_else(|p| p.into_inner()) = Some(service);
            self.switching.store(false, Ordering::SeqCst);
            resumed.map_err(unavailable)?;
            return Err(CustodyError::Unavailable(
                "requests in flight did not finish in time: send the approvals again".into(),
            ));
        }
        drop(service);
        let (new_id, old_id) = (new.key_id().to_string(), old.key_id().to_string());
        let opened = custody
            .opener
            .open(&new, std::slice::from_ref(&old), self.keys.clone());
        let result = match opened {
            Ok(service) => {
                state.master = Some(new);
                state.previous = vec![old];
                let mut event = Event::new(now, "custody_rekeyed", &new_id, approvals);
                event.key_ids.push(old_id);
                state.record(event);
                self.set_open(state, service);
                tracing::info!(key_id = %new_id, previous = %state.previous[0].key_id(),
                    "rekeyed: the sweep moves every record under the new key");
                Ok(())
            }
            // The database is as it was (or the store failed before the new key registered):
            // serve on the old key.
            Err(error) => match custody.opener.open(&old, &[], self.keys.clone()) {
                Ok(service) => {
                    tracing::error!(%error, "rekey failed; serving on the old key");
                    self.set_open(state, service);
                    Err(CustodyError::Unavailable(error.to_string()))
                }
                Err(again) => {
                    // Which key is active is the database's to say: sealed, the custodians
                    // unseal with both share sets (they have the new one: it was answered).
                    tracing::error!(%error, %again, "rekey failed and the database did not \
                        reopen: sealed until the custodians unseal it with both share sets");
                    state.master = None;
                    state.previous.clear();
                    Err(CustodyError::Unavailable(error.to_string()))
                }
            },
        };
        self.switching.store(false, Ordering::SeqCst);
        result
    }

    /// After a rekey: once the sweep is complete, verifies it and retires the previous key
    /// (in the database's registry, then from memory). Called regularly; a verification
    /// that fails is retried a little later (another replica may still write under the old
    /// key until it restarts with the new one).
    pub fn finish_rekey(&self, now: i64) {
        let Some(custody) = &self.custody else {
            return;
        };
        let Some(service) = self.current() else {
            return;
        };
        let mut state = custody.lock();
        if state.previous.is_empty()
            || service.vault().rotation_pending()
            || state
                .retire_refused_at
                .is_some_and(|at| at.elapsed() < RETIRE_RETRY)
        {
            return;
        }
        let old = state.previous[0].key_id();
        match service.vault().retire_key(old) {
            Ok(()) => {
                state.previous.remove(0);
                state.retire_refused_at = None;
                state.record(Event::new(
                    now,
                    "custody_previous_key_dropped",
                    &old.to_string(),
                    vec![],
                ));
                self.write_events(&mut state);
                tracing::info!(key_id = %old, "the sweep is verified: the previous master key is retired and forgotten");
            }
            Err(error) => {
                state.retire_refused_at = Some(Instant::now());
                tracing::warn!(key_id = %old, %error, "the previous master key cannot be retired yet");
            }
        }
    }
}
