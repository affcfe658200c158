// The Kotlin bindings against a real server: attest under the dev policy, enrol, assess,
// identify (encrypted answer), erase; the production policy must refuse simulated evidence.
// Run by clients/python/tests/test_kotlin.py; prints one JSON answer per line.
//
// args: <base url> <dev policy> <production policy> <client key file> <enrol.json> <probe.json>

import uniffi.tee_risk_client.AttestationPolicy
import uniffi.tee_risk_client.Credential
import uniffi.tee_risk_client.TeeRiskClient
import uniffi.tee_risk_client.TeeRiskException
import java.io.File
import kotlin.system.exitProcess

/** The numbers of a features file: `{"features": [..]}` (the shipped samples' shape). */
fun features(path: String): List<Float> =
    File(path).readText().substringAfter("\"features\"").substringAfter('[').substringBefore(']')
        .split(',').map { it.trim().toFloat() }

fun main(args: Array<String>) {
    val (url, devPolicy, productionPolicy, clientKey, enrol, probe) = args
    val client = TeeRiskClient.attest(
        url, AttestationPolicy.load(devPolicy), Credential.fromFile("dev", clientKey),
    )
    println("{\"attested\":\"${client.attestation()?.tee}\",\"identity_kid\":\"${client.identityKid()}\"}")
    // The answers are typed records; printed as JSON lines for the Python test to read.
    val enrolled = client.enroll("kotlin-user", features(enrol), null, "kiosk-1", false)
    println("{\"outcome\":\"${enrolled.outcome}\",\"templates\":${enrolled.templates}}")
    // Identify before the assessment makes this probe a recent one (identify refuses those).
    val identified = client.identify(features(probe), null, null, 3u)
    val best = identified.candidates.firstOrNull()?.userId ?: ""
    println("{\"decision\":\"${identified.decision}\",\"best\":\"$best\"}")
    val assessed = client.assess("kotlin-user", features(probe), 0.97f, "kiosk-1", false)
    println("{\"decision\":\"${assessed.decision}\",\"score\":${assessed.score}}")
    val erased = client.erase("kotlin-user", true)
    println("{\"templates\":${erased.templates}}")
    try {
        TeeRiskClient.attest(url, AttestationPolicy.load(productionPolicy), null)
        System.err.println("the production policy accepted simulated evidence")
        exitProcess(1)
    } catch (e: TeeRiskException.Untrusted) {
        println("{\"production_policy\":\"refused\",\"check\":\"${e.check}\"}")
    }
}

private operator fun <T> Array<T>.component6(): T = this[5]
