//! `POST /v1/custody/init`: the master key made here, split among the custodians.

use super::*;

impl Gate {
    /// `POST /v1/custody/init`: on an empty database, makes the master key in memory,
    /// splits it k of n, seals each share to its custodian, creates the database and serves.
    pub fn init(&self, request: &Approval, now: i64) -> Result<SignedResponse, CustodyError> {
        self.handle(
            "custody_init_refused",
            &request.custodian,
            now,
            Self::check_sealed,
            |custody, state| self.try_init(custody, state, request, now),
        )
    }

    fn try_init(
        &self,
        custody: &Custody,
        state: &mut CustodyState,
        request: &Approval,
        now: i64,
    ) -> Result<SignedResponse, CustodyError> {
        custody.check_approval(state, request, Purpose::Init)?;
        match custody.opener.key_ids().map_err(unavailable)? {
            None => {}
            Some(ids) => {
                let names = ids.iter().map(ToString::to_string).collect::<Vec<_>>();
                return Err(CustodyError::DatabaseNotEmpty(names.join(", ")));
            }
        }
        let master = MasterKey::generate().map_err(|_| CustodyError::Internal)?;
        let key_id = master.key_id();
        let (k, n) = (custody.roster.threshold, custody.roster.custodians.len());
        let files = custody.split(&master)?;
        let service = custody
            .opener
            .open(&master, &[], self.keys.clone())
            .map_err(|e| match e {
                OpenError::Refused(why) => CustodyError::DatabaseNotEmpty(why),
                OpenError::Fault(why) => CustodyError::Unavailable(why),
            })?;
        let reply = InitReply {
            typ: INIT_TYP.into(),
            attempt: request.attempt.clone(),
            key_id: key_id.to_string(),
            threshold: k,
            shares: files,
        };
        let signed = self.sign(&reply)?;
        state.master = Some(master);
        let mut event = Event::new(
            now,
            "custody_initialised",
            &key_id.to_string(),
            vec![request.custodian.clone()],
        );
        event.counts.insert("threshold".into(), k.into());
        event.counts.insert("shares".into(), n as u64);
        state.record(event);
        self.set_open(state, service);
        tracing::info!(key_id = %key_id, by = %request.custodian, k, n, "custody initialised");
        Ok(signed)
    }
}
